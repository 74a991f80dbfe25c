"""Code tasks: programs sampled from the policy, run in the sandbox, picked by behaviour.

``extract``: reply text to program (parsing only). ``checks``: tests as sandbox checks.
``select``: the pick from execution results (pure). ``task``: the whole flow, over protocols.
"""

from edgetts.code.task import CodeConfig, CodeResult, CodeTask, ProgramGenerator, solve_code

__all__ = ["CodeConfig", "CodeResult", "CodeTask", "ProgramGenerator", "solve_code"]
