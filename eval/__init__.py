"""Evaluation stage: offline reference-answer likelihood now; judge-based AlpacaEval / MT-Bench plug in here."""
