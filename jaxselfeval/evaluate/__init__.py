"""Evaluation harness: per-prompt records, aggregation, Markdown report and plots."""

from jaxselfeval.evaluate.records import PromptRecord, aggregate

__all__ = ["PromptRecord", "aggregate"]
