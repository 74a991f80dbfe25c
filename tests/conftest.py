import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the slow end-to-end tests (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Plain ``pytest`` runs the fast tests; ``--slow`` (the README's and CI's command) runs all,
    and a ``-m`` expression (``-m slow``) picks as it says."""
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def policy():
    """The real default GGUF on llama.cpp, loaded once for all slow tests (pulled if missing)."""
    from edgetts.policy import LlamaPolicy, PolicyConfig

    pol = LlamaPolicy(PolicyConfig(n_seq_max=8, max_tokens=256, seed=0))
    yield pol
    pol.close()


@pytest.fixture(scope="session")
def scorer():
    """The shipped PRM through onnxruntime."""
    from edgetts.prm import PRMScorer

    return PRMScorer.load()
