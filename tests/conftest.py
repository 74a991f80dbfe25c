import pytest


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
