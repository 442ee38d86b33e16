"""Evaluation stage: offline reference-answer likelihood, AlpacaEval aggregation; judges plug in here."""

from eval.alpaca_eval import alpaca_eval_summary

__all__ = ["alpaca_eval_summary"]
