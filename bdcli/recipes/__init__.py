"""YAML recipes for whole-table reproduction: schema, expansion into a graph of steps, a store found by
fingerprint, and a runner over a pluggable executor."""

from .executor import Executor, LocalProcessExecutor, default_threads
from .plan import Node, Plan, estimate_steps, expand
from .runner import RunSummary, describe_plan, gather_records, plan_warnings, print_event, run_plan, step_folder
from .schema import Recipe, load_recipe, read_yaml

__all__ = ["Executor", "LocalProcessExecutor", "default_threads", "Node", "Plan", "estimate_steps", "expand",
           "RunSummary", "describe_plan", "gather_records", "plan_warnings", "print_event", "run_plan",
           "step_folder", "Recipe", "load_recipe", "read_yaml"]
