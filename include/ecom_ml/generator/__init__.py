"""The realistic order generator: a simulated gift and home shop writing its orders into the orders DB.

Deterministic for a seed, continuable day by day (the nightly pipeline's view), with injectable
faults for the quality checks. ``generate`` is the one entry point; see ``runner`` for how a run
decides what to write and ``world``/``days`` for what the simulated customers do.
"""

from ecom_ml.generator.config import GeneratorConfig, GeneratorError, Injections, parse_injections
from ecom_ml.generator.runner import GenerationSummary, generate

__all__ = ["GenerationSummary", "GeneratorConfig", "GeneratorError", "Injections", "generate", "parse_injections"]
