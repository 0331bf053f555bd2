"""halo_ref.training.state: a run's position survives a checkpoint's meta, and its record adds up."""

from __future__ import annotations

import json

import numpy as np

from halo_ref.training.state import RunState


def test_meta_round_trip_restores_the_random_stream_and_the_position():
    state = RunState.start(seed=3)
    state.begin_epoch(10)
    state.record_step(loss=2.0, correct=3, seen=4, seconds=0.5)
    meta = json.loads(json.dumps(state.meta()))  # through JSON, as a checkpoint stores it
    again = RunState.resume(3, meta, state.order)
    assert (again.epoch, again.batch, again.step) == (0, 1, 1)
    assert np.array_equal(again.order, state.order)
    assert again.sums == state.sums and again.elapsed == 0.5
    # the same stream: both draw the same next numbers
    assert np.array_equal(again.rng.random(5), state.rng.random(5))


def test_an_epoch_draws_its_order_once_and_records_its_totals():
    state = RunState.start(seed=0)
    state.begin_epoch(6)
    first = state.order.copy()
    assert sorted(first) == list(range(6))
    state.record_step(loss=1.0, correct=1, seen=2, seconds=1.0)
    state.begin_epoch(6)  # resumed within the epoch: the order is kept
    assert np.array_equal(state.order, first)
    assert list(state.batch_indices(2)) == list(first[2:4])
    state.record_step(loss=3.0, correct=2, seen=2, seconds=1.0)
    assert state.end_epoch(loss=0.5, acc=0.25, lr=0.1, seconds=2.0)  # the best so far
    row = state.history[-1]
    assert (row["test_loss"], row["test_acc"]) == (0.5, 0.25)
    assert (row["epoch"], row["step"], row["train_loss"], row["train_acc"]) == (1, 2, 2.0, 0.75)
    assert row["elapsed_seconds"] == 4.0 and (state.epoch, state.batch) == (1, 0)
    state.begin_epoch(6)
    assert state.sums["seen"] == 0 and not np.array_equal(state.order, first)
    state.record_step(loss=1.0, correct=0, seen=2, seconds=1.0)
    assert not state.end_epoch(loss=0.4, acc=0.25, lr=0.1, seconds=0.0, split="val")  # not better
    assert state.best_acc == 0.25
    assert (state.history[-1]["val_acc"], "test_acc" in state.history[-1]) == (0.25, False)
