from components.compute import loop
from components.compute.loop import LoopPlan, micro_batches


def plan(micro, accum, steps=3):
    return LoopPlan("t", n_examples=50, micro_batch_size=micro, grad_accum=accum, epochs=1, max_steps=steps,
                    log_every=1, eval_every=1, seed=0)


def batches_of(monkeypatch, rank, world, micro, accum):
    monkeypatch.setattr(loop, "world", lambda: (rank, world))
    return list(micro_batches(plan(micro, accum)))


def test_two_ranks_see_the_micro_batches_one_rank_accumulates(monkeypatch):
    one = batches_of(monkeypatch, 0, 1, micro=4, accum=2)
    r0, r1 = batches_of(monkeypatch, 0, 2, 4, 1), batches_of(monkeypatch, 1, 2, 4, 1)
    assert len(one) == 6 and len(r0) == len(r1) == 3
    for step in range(3):
        assert one[2 * step] == r0[step] and one[2 * step + 1] == r1[step]
        assert len(set(r0[step]) | set(r1[step])) == 8  # a global batch has no repeats


def test_epochs_wrap_without_short_steps(monkeypatch):
    monkeypatch.setattr(loop, "world", lambda: (0, 1))
    p = LoopPlan("t", 10, 4, 1, epochs=3, max_steps=None, log_every=1, eval_every=1, seed=0)
    got = list(micro_batches(p))
    assert p.total_steps == 6 and len(got) == 6 and all(len(b) == 4 for b in got)
