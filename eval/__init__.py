"""Evaluation: the evaluators (AlpacaEval, MT-Bench, reference-answer NLL) in generate / score halves, judges,
generation backends. Importing the package registers every evaluator."""

from eval import benchmarks, nll_targets  # noqa: F401  (registration)
from eval.alpaca_eval import alpaca_eval_summary

__all__ = ["alpaca_eval_summary"]
