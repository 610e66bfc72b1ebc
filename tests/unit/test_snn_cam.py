"""The CA3 content-addressable memory (labkit.snn.cam): the paper's functional behaviour as automated tests,
the conversions from SpiNNaker (hand-computed numbers), the schedule, bad input and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.snn import cam
from labkit.snn.cam import CA3Memory, CA3Params, Learn, RecallContent, RecallCue
from labkit.snn.lif import lif_closed_form, stdp_window

BACKEND = "torch"


def bits(n, *idx):
    a = np.zeros(n, bool)
    a[list(idx)] = True
    return a


# ---- the functional test ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, gap", [("paper, converted", 3), ("τ± = 2 ms", 0)])
def test_functional_orthogonal_any_single_bit_and_forgetting(variant, gap):
    """4 orthogonal memories, operations 10 ms apart (the paper's functional tests) or, with τ± = 2 ms, at the
    maximum rate: each recalled exactly by its cue and from every one of its bits; relearning cue 0 replaces its
    content in both directions; the other memories are untouched."""
    C, K = 5, 10
    contents = {0: bits(K, 0, 5), 1: bits(K, 1, 6), 2: bits(K, 2, 7), 3: bits(K, 3, 4)}
    ops = [Learn(c, x) for c, x in contents.items()]
    ops += [RecallCue(c) for c in contents]
    ops += [RecallContent(bits(K, b)) for b in range(8)]
    ops += [Learn(0, bits(K, 8, 9)), RecallCue(0), RecallContent(bits(K, 0)), RecallContent(bits(K, 5)),
            RecallContent(bits(K, 8)), RecallContent(bits(K, 9)), RecallCue(1), RecallContent(bits(K, 6)),
            RecallCue(4)]
    mem = CA3Memory(C, K, cam.param_variants()[variant], backend=BACKEND)
    results = mem.run(ops, gap=gap)
    assert [r.t for r in results[:5]] == [1 + k * (7 + gap) for k in range(5)]  # 7 ms after a learn at the least
    by_content = {int(np.flatnonzero(r.op.content)[0]): r.cue_ids for r in results[8:16]}
    assert by_content == {0: [0], 1: [1], 2: [2], 3: [3], 4: [3], 5: [0], 6: [1], 7: [2]}
    for r in results[4:8]:
        np.testing.assert_array_equal(r.content, contents[r.op.cue])
    tail = results[16:]
    np.testing.assert_array_equal(tail[1].content, bits(K, 8, 9))  # the new content
    assert tail[2].cue_ids == [] and tail[3].cue_ids == []  # the old bits no longer reach cue 0
    assert tail[4].cue_ids == [0] and tail[5].cue_ids == [0]
    np.testing.assert_array_equal(tail[6].content, contents[1])
    assert tail[7].cue_ids == [1]
    assert not tail[8].content.any()  # an empty cue recalls nothing
    s = cam.score(results, C, K)
    assert s["errors"] == [] and s["recall_cue"]["exact"] == 1.0 and s["recall_content"]["exact"] == 1.0
    stored = mem.stored()
    np.testing.assert_array_equal(stored[0], bits(K, 8, 9))
    np.testing.assert_array_equal(stored[1], contents[1])


@pytest.mark.parametrize("name", list(cam.paper_schedules()))
def test_paper_schedules_pass(name):
    """The five test schedules of the paper's code are answered exactly (recall by cue and by content)."""
    mem = CA3Memory(5, 10, backend=BACKEND)
    s = cam.score(mem.run(cam.paper_schedules()[name]), 5, 10)
    assert s["errors"] == []


def test_verbatim_parameters_lose_recall_by_content():
    """Without the PSP and STDP-timing conversions, recall by content misses cues (why the conversions exist)."""
    mem = CA3Memory(5, 10, CA3Params.paper(), backend=BACKEND)
    s = cam.score(mem.run(cam.paper_schedules()["recall_content_single"]), 5, 10)
    assert s["recall_cue"]["exact"] == 1.0
    assert s["recall_content"]["exact"] < 1.0


def test_overlapping_stress_schedule_recall_by_cue():
    """The paper's stress test (maximum rate, overlapping contents, two memories overwritten) is answered exactly,
    and the output timing is the paper's: cue at t + 5, content at t + 6 for a recall by cue."""
    mem = CA3Memory(5, 10, backend=BACKEND)
    results = mem.run(cam.paper_schedules()["stress"])
    assert cam.score(results, 5, 10)["errors"] == []
    out = mem.network.spike_matrix("OL")
    r = results[3]  # recall by cue 4 at t = 22
    assert out[r.t + 5, 4] and not out[r.t + 5, 5:].any()
    np.testing.assert_array_equal(out[r.t + 6, 5:], bits(10, 7, 8, 9))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(list(range(8))), st.integers(1, 4))
def test_property_orthogonal_memories(perm, n_mem):
    """Random orthogonal memories (2 bits each): every cue and every single bit recalls exactly."""
    K = 8
    contents = {c: bits(K, perm[2 * c], perm[2 * c + 1]) for c in range(n_mem)}
    ops = [Learn(c, x) for c, x in contents.items()] + [RecallCue(c) for c in contents]
    ops += [RecallContent(bits(K, b)) for c in contents for b in np.flatnonzero(contents[c])]
    mem = CA3Memory(4, K, backend=BACKEND)
    assert cam.score(mem.run(ops), 4, K)["errors"] == []


# ---- the conversions, by hand ---------------------------------------------------------------------------


def test_psp_gains_by_hand():
    # SpiNNaker: R (τs/dt)(1 − e^{−dt/τs})(1 − e^{−dt/τm}); fast cells R = 0.5/0.14
    want = (0.5 / 0.14) * 0.3 * (1 - math.exp(-1 / 0.3)) * (1 - math.exp(-2.0))
    assert cam.spinnaker_psp_gain(0.14, 0.5, 0.3) == pytest.approx(want, rel=1e-12)
    assert cam.spinnaker_psp_gain(0.14, 0.5, 0.3) == pytest.approx(0.8934, abs=1e-4)
    # exact: the closed-form membrane one ms after a 1 nA jump
    p = CA3Params().cell("fast")
    v1 = lif_closed_form([1.0], p, I0=1.0)[0] - p.v_rest
    assert cam.exact_psp_gain(0.14, 0.5, 0.3) == pytest.approx(v1, rel=1e-12)
    assert cam.exact_psp_gain(0.14, 0.5, 0.3) == pytest.approx(0.5339, abs=1e-4)
    assert CA3Params().kappa("fast") == pytest.approx(0.8934 / 0.5339, abs=1e-3)
    assert CA3Params.paper().kappa("fast") == 1.0


def test_stdp_dendritic_delay_window():
    """Our rule with A₊e^{−1/τ₊}, A₋e^{1/τ₋} is SpiNNaker's window shifted by one step: Δt_eff = Δt + 1."""
    p = CA3Params()
    rule = p.stdp("slow")
    k = p.kappa("slow")
    dts = np.array([-4.0, -2.0, -1.0, 0.0, 1.0, 3.0])
    eff = dts + 1
    spinnaker = np.where(eff > 0, 6 * np.exp(-eff / 3), -6 * np.exp(eff / 3)) * k
    np.testing.assert_allclose(stdp_window(dts, rule), spinnaker, rtol=1e-12)
    assert rule.w_max == pytest.approx(6 * k)
    verbatim = CA3Params.paper().stdp("slow")
    assert (verbatim.A_plus, verbatim.A_minus, verbatim.w_max) == (6.0, 6.0, 6.0)


def test_reference_and_score_by_hand():
    K = 4
    ops = [Learn(0, bits(K, 0, 1)), Learn(1, bits(K, 1, 2)), RecallContent(bits(K, 1)), RecallContent(bits(K, 3)),
           RecallCue(1), RecallCue(2)]
    ref = cam.reference_results(ops, 3, K)
    assert ref[2][0].tolist() == [True, True, False]
    assert not ref[3][0].any()
    assert ref[4][1].tolist() == [False, True, True, False]
    assert not ref[5][1].any()
    # a fake answer with one wrong cue: precision 2/3, recall 1
    results = [cam.OpResult(op, 0, c.copy(), x.copy()) for op, (c, x) in zip(ops, ref)]
    results[3].cues[2] = True
    s = cam.score(results, 3, K)
    assert s["recall_content"]["exact"] == 0.5 and s["recall_content"]["precision"] == pytest.approx(2 / 3)
    assert s["recall_cue"]["exact"] == 1.0 and s["errors"] == [(3, "recall_content", [2], [])]


def test_sizes_schedule_and_input():
    mem = CA3Memory(3, 6, backend=BACKEND)
    assert mem.n_neurons == 4 * 3 + 4 * 6 + 1
    timed = mem.schedule([Learn(0, bits(6, 1)), RecallCue(0), RecallContent(bits(6, 1)), RecallCue(2)], gap=2)
    assert [t for _, t in timed] == [1, 1 + 7 + 2, 1 + 7 + 2 + 6 + 2, 1 + 7 + 2 + 12 + 4]
    times, neurons = mem.input_spikes(timed)
    assert times[:4].tolist() == [1, 1, 2, 2] and neurons[:4].tolist() == [0, 4, 0, 4]  # held 3 steps
    assert times[6:].tolist() == [10, 18, 26] and neurons[6:].tolist() == [0, 4, 2]
    assert mem.build(mem.input_spikes(timed)).populations["contCond"].n == 6


def test_cam_fragment_theory_is_sdr_false_match():
    from labkit.assoc.sdr import false_match_probability

    # one stored 2-bit content among n = 4 bits: a 1-bit fragment of another is hit with probability 1/2
    assert cam.cam_fragment_theory(2, 4, 2, 1)[()] == pytest.approx(0.5)
    P = np.array([1, 5, 9])
    np.testing.assert_allclose(cam.cam_fragment_theory(P, 64, 4, 2),
                               (1 - false_match_probability(64, 4, 1, s=2)) ** (P - 1))


def test_random_contents():
    x = cam.random_contents(8, 32, 4, seed=3, orthogonal=True)
    assert x.shape == (8, 32) and (x.sum(1) == 4).all() and (x.sum(0) <= 1).all()
    y = cam.random_contents(20, 32, 5, seed=3)
    assert (y.sum(1) == 5).all()
    with pytest.raises(ValueError, match="orthogonal contents need"):
        cam.random_contents(9, 32, 4, orthogonal=True)


# ---- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, match", [
    (np.ones(9, int), "n_content = 10 bits, got shape"),
    (np.ones((2, 10), int), "1-D pattern"),
    (np.full(10, 2), "binary"),
    (np.full(10, 0.5), "binary"),
    (np.zeros(10, bool), "at least one active bit"),
])
def test_bad_content(content, match):
    mem = CA3Memory(5, 10, backend=BACKEND)
    with pytest.raises(ValueError, match=match):
        mem.learn(0, content)
    with pytest.raises(ValueError, match=match):
        mem.recall_by_content(content)


@pytest.mark.parametrize("cue", [-1, 5, 2.0, True, "0"])
def test_bad_cue(cue):
    mem = CA3Memory(5, 10, backend=BACKEND)
    with pytest.raises(ValueError, match="cue must be"):
        mem.recall_by_cue(cue)
    with pytest.raises(ValueError, match="cue must be"):
        mem.learn(cue, bits(10, 1))


def test_ops_too_close_and_bad_ops():
    mem = CA3Memory(5, 10, backend=BACKEND)
    with pytest.raises(ValueError, match=r"minimum spacing after a learn is 7 ms \(earliest t = 8\)"):
        mem.run([Learn(0, bits(10, 1), t=1), RecallCue(0, t=7)])
    with pytest.raises(ValueError, match=r"after a recall_cue is 6 ms"):
        mem.run([RecallCue(0, t=1), RecallCue(1, t=6)])
    with pytest.raises(ValueError, match=r"ops\[0\].t must be in"):
        mem.run([RecallCue(0, t=0)])
    with pytest.raises(TypeError, match=r"ops\[1\] must be a Learn"):
        mem.run([RecallCue(0), ("learn", 0)])
    with pytest.raises(TypeError, match="ops must be a sequence"):
        mem.run(RecallCue(0))
    with pytest.raises(ValueError, match="n_cues must be in"):
        CA3Memory(0, 10)
    with pytest.raises(TypeError, match="params must be a CA3Params"):
        CA3Memory(2, 3, params={"tau_syn": 0.3})
    with pytest.raises(ValueError, match="stdp_tau_plus must be a number > 0"):
        CA3Params(stdp_tau_plus=-3.0)
    with pytest.raises(ValueError, match="missing"):
        CA3Params(synapses={})
    with pytest.raises(RuntimeError, match="run a schedule first"):
        mem.raster_figure()


# ---- determinism -----------------------------------------------------------------------------------------


def test_deterministic_and_backends_agree():
    ops = cam.random_schedule(5, 10, 14, 3, seed=7)
    runs = []
    backends = ["torch", "torch"]
    try:
        import numba  # noqa: F401

        backends.append("numba")
    except ImportError:  # pragma: no cover - numba is in requirements.txt
        pass
    for backend in backends:
        mem = CA3Memory(5, 10, backend=backend)
        res = mem.run(ops)
        runs.append((mem.network.spike_matrix("OL"), mem.W_cue_cont.copy(), mem.W_cont_cue.copy(),
                     [(r.cues.tolist(), r.content.tolist()) for r in res]))
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0][0], other[0])
        np.testing.assert_array_equal(runs[0][1], other[1])
        np.testing.assert_array_equal(runs[0][2], other[2])
        assert runs[0][3] == other[3]


def test_weights_carry_over_between_calls_and_raster():
    mem = CA3Memory(5, 10, backend=BACKEND)
    mem.learn(2, bits(10, 3, 4))
    np.testing.assert_array_equal(mem.recall_by_cue(2), bits(10, 3, 4))
    assert np.flatnonzero(mem.recall_by_content(bits(10, 4))).tolist() == [2]
    fig = mem.raster_figure()
    assert any("recall by content" in (a.text or "") for a in fig.layout.annotations)
