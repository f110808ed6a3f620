"""The capability token: labels, metrics, the external reward model, prompt files."""

from jaxselfeval.selfeval.labels import capability_rows, capability_targets, truncation_points
from jaxselfeval.selfeval.metrics import (auroc, brier, ece, plot_reliability, reliability,
                                          reliability_diagram)
from jaxselfeval.selfeval.prompts import PromptSet, load_prompts, read_prompt_file
from jaxselfeval.selfeval.reward_model import (RewardModel, init_reward_model, load_reward_model,
                                               save_reward_model)

__all__ = ["capability_targets", "truncation_points", "capability_rows", "auroc", "brier", "ece",
           "reliability", "reliability_diagram", "plot_reliability", "PromptSet", "load_prompts",
           "read_prompt_file", "RewardModel", "init_reward_model", "load_reward_model",
           "save_reward_model"]
