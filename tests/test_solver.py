"""SolveOptions: settings no strategy can run with fail before any model loads."""

from dataclasses import replace

import pytest

from edgetts.solver import SolveOptions


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"strategy": "bogus"}, "unknown strategy"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"deadline_s": float("nan")}, "finite"),  # a NaN deadline never expired
        ({"stop": ("\ud800",)}, "not valid Unicode"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"strategy": "beam_search", "n": 6, "beam_width": 4}, "multiple"),
        # (search review) a lone string would stop at each of its characters
        ({"stop": "\n\n"}, "list of strings"),
        ({"stop": None}, "list of strings"),
        # greedy is one majority sample: its search settings are checked too
        ({"strategy": "greedy", "agg": "bogus"}, "aggregation"),
        ({"strategy": "greedy", "deadline_s": -1}, "deadline_s"),
        ({"strategy": "auto", "beam_width": 0}, "beam_width"),
    ],
)
def test_bad_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        SolveOptions(**bad).validate()


def test_defaults_are_valid():
    SolveOptions().validate()
    SolveOptions(strategy="greedy", top_k=20, top_p=0.8).validate()


# Two samples: "good" ends high after a weak step, "steady" never dips.
AGG_TREE = {"weak": {"good \\boxed{1}": {}}, "fine": {"steady \\boxed{2}": {}}}
AGG_SCORES = {"weak": 0.1, "good \\boxed{1}": 0.9, "fine": 0.6, "steady \\boxed{2}": 0.7}


def solver_with_fakes(default_aggregation: str):
    from fakes import FakeGenerator, FakeScorer, tree_policy

    from edgetts.solver import Solver

    generator = FakeGenerator(tree_policy(AGG_TREE))
    scorer = FakeScorer(AGG_SCORES)
    scorer.default_aggregation = default_aggregation
    solver = Solver()
    generator.config = solver.policy_config  # stands for a policy loaded as configured
    solver._policy, solver._scorer = generator, scorer
    return solver


@pytest.mark.parametrize(
    "manifest_agg, asked, answer",
    [
        ("min", None, "2"),  # the PRM's own aggregation by default: "good" dips to 0.1
        ("last", None, "1"),
        ("min", "last", "1"),  # an explicit --agg wins
    ],
)
def test_aggregation_defaults_to_the_prms_own(manifest_agg, asked, answer):
    solver = solver_with_fakes(manifest_agg)
    result = solver.solve("q", SolveOptions(strategy="best_of_n", n=2, agg=asked))
    assert result.answer == answer


@pytest.mark.parametrize("manifest_prune, prune, pruned", [(0.2, True, 1), (0.2, False, 0), (None, True, 0)])
def test_solver_prunes_as_the_verifiers_manifest_says_unless_told_not_to(manifest_prune, prune, pruned):
    solver = solver_with_fakes("min")
    solver._scorer.prune_below = manifest_prune  # "weak" scores 0.1: under 0.2
    options = SolveOptions(strategy="weighted_best_of_n", n=2, prune=prune)
    result = solver.solve("q", options)
    assert [c.stop_reason for c in result.candidates].count("pruned") == pruned
    assert result.answer == "2"
    no_waves = solver.solve("q", SolveOptions(strategy="weighted_best_of_n", n=2, adaptive=False))
    assert "pruned" not in [c.stop_reason for c in no_waves.candidates]  # pruning is adaptive's


@pytest.mark.parametrize(
    "options, threshold",
    [
        (SolveOptions(strategy="weighted_best_of_n", n=4), 0.9),
        (SolveOptions(strategy="weighted_best_of_n", n=4, prune=False), 0.9),  # not pruning's own
        (SolveOptions(strategy="auto", n=4), 0.9),
        # picked for the verifier's own aggregation ("min" here): another keeps the default
        (SolveOptions(strategy="weighted_best_of_n", n=4, agg="last"), None),
    ],
)
def test_solver_gives_the_weighted_vote_the_verifiers_stopping_threshold(monkeypatch, options, threshold):
    import edgetts.solver as solver_module

    solver = solver_with_fakes("min")
    solver._scorer.adaptive_threshold = threshold
    seen = []
    real_run_search = solver_module.run_search
    monkeypatch.setattr(
        solver_module, "run_search", lambda *args: seen.append(args[-1]) or real_run_search(*args)
    )
    solver.solve("q", options)
    assert seen[-1].adaptive.weighted_threshold == threshold
    assert seen[-1].adaptive.threshold == SolveOptions().search_config().adaptive.threshold
    solver.solve("q", replace(options, adaptive=False))
    assert seen[-1].adaptive is None


@pytest.mark.slow
def test_weighted_vote_on_the_real_probe_prunes_exactly_the_samples_under_its_threshold():
    """The default policy and probe: a sample stops at the first step scoring under the
    manifest's prune_below, and a sample that ran on never scored under it before its end,
    unless it was its wave's last one standing (a wave always finishes one sample)."""
    from edgetts.search.adaptive import AdaptiveStop
    from edgetts.solver import Solver

    question = (
        "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
        "muffins for her friends every day with four. She sells the remainder at the farmers' "
        "market daily for $2 per fresh duck egg. How much in dollars does she make every day?"
    )
    with Solver() as solver:
        options = SolveOptions(strategy="weighted_best_of_n", n=8, max_tokens=300)
        result = solver.solve(question, options)
        below = solver._scorer.prune_below
    assert below is not None  # the shipped probe prunes
    first = 0
    for size in AdaptiveStop().waves(len(result.candidates)):
        wave = result.candidates[first : first + size]
        first += size
        for c in wave:
            if c.stop_reason == "pruned":
                assert min(c.step_scores) < below <= min(c.step_scores[:-1], default=1.0)
                assert c.provisional or c.answer is None
            elif min(c.step_scores[:-1], default=1.0) < below:  # ran on: the others were stopped
                assert sum(o.stop_reason == "pruned" for o in wave) == size - 1


@pytest.mark.slow
def test_prepare_loads_what_solve_then_uses():
    """prepare() plans and loads up front, so a timed solve does not include the model load."""
    from edgetts.solver import Solver

    solver = Solver()
    question = "A pen costs 3 dollars. How much do 7 pens cost?"
    options = SolveOptions(deadline_s=20, memory_mb=2000)
    plan = solver.prepare(question, options)
    policy, scorer = solver._policy, solver._scorer
    assert plan is not None and policy is not None and scorer is not None
    assert policy.config.capture_states  # the default policy's PRM is its own probe
    result = solver.solve(question, options)
    assert solver._policy is policy and solver._scorer is scorer  # nothing loaded again
    assert result.answer is not None
    solver.close()


def test_confidence_vote_turns_token_confidence_on_and_off_without_touching_the_users_config():
    from dataclasses import replace as dc_replace

    from fakes import tree_policy
    from test_confidence import ConfGenerator

    from edgetts.solver import Solver

    tree = {"a \\boxed{1}": {}, "b \\boxed{2}": {}}
    solver = Solver()
    generator = ConfGenerator(tree_policy(tree), confs={"a ": 1.0, "b ": 9.0})
    generator.config = dc_replace(solver.policy_config)  # the loaded policy's own copy
    solver._policy = generator
    result = solver.solve("q", SolveOptions(strategy="confidence_vote", n=2))
    assert result.answer == "2" and generator.samplings[-1].record_confidence
    assert not solver.policy_config.capture_confidence  # the user's settings stay as given
    assert not generator.config.capture_confidence  # nor the loaded policy's: it is per search
    solver.solve("q", SolveOptions(strategy="majority", n=2))
    assert not generator.samplings[-1].record_confidence


def test_a_wide_beam_under_a_budget_is_checked_against_the_plans_n_not_the_default():
    SolveOptions(strategy="beam_search", beam_width=8, memory_mb=2000).validate()  # N: the plan's
    with pytest.raises(ValueError, match="beam_width"):
        SolveOptions(strategy="beam_search", beam_width=8, n=4).validate()


def test_a_bad_mode_is_named_before_the_missing_sandbox():
    solver = solver_with_fakes("min")
    with pytest.raises(ValueError, match="unknown mode"):
        solver.solve("q", SolveOptions(mode="bogus"))


def test_a_conversation_is_planned_by_all_its_turns_not_its_last_question(monkeypatch):
    """Search review: a 40,000-character chat ending in a short question was planned as a
    44-token prompt, so a deadline plan thought its prefill free."""
    from edgetts import solver as solver_module
    from edgetts.prompts import Conversation

    class Planned(Exception):
        pass

    def plan(self, options, text=None):
        raise Planned(text)

    solver = solver_with_fakes("min")
    monkeypatch.setattr(solver_module.Solver, "plan", plan)
    chat = Conversation((("user", "x " * 20_000), ("assistant", "ok"), ("user", "What is 6*7?")))
    with pytest.raises(Planned) as planned:
        solver.solve(chat, SolveOptions(strategy="majority", n=1, deadline_s=60))
    assert len(planned.value.args[0]) > 40_000


@pytest.mark.parametrize("env, expected", [(None, 0), ("-1", -1)])
def test_a_loaded_model_is_planned_with_the_offload_it_was_loaded_with(monkeypatch, env, expected):
    """Diff review: a server's model loaded on the CPU (no --n-gpu-layers, none in the
    environment) was planned with every layer offloaded on a GPU build, so its deadlines read
    the GPU's calibration."""
    from types import SimpleNamespace

    from edgetts import solver as solver_module
    from edgetts.policy import PolicyConfig
    from edgetts.solver import Solver

    if env is None:
        monkeypatch.delenv("EDGETTS_N_GPU_LAYERS", raising=False)
    else:
        monkeypatch.setenv("EDGETTS_N_GPU_LAYERS", env)
    budgets = []

    def plan_for(model, budget, prm_dir=None):
        budgets.append(budget)
        raise RuntimeError("planned")

    monkeypatch.setattr(solver_module, "plan_for", plan_for)
    solver = Solver(fixed_policy=True)
    solver._policy = SimpleNamespace(config=PolicyConfig(n_gpu_layers=None))
    with pytest.raises(RuntimeError, match="planned"):
        solver.plan(SolveOptions(strategy="majority", deadline_s=30), "q")
    assert budgets[0].n_gpu_layers == expected
