"""A third-party task package, as another distribution would ship it (test fixture)."""

from dseval.data import DatasetSpec
from dseval.task import Task, register_task


@register_task
class ThirdParty(Task):
    name = "thirdparty"
    version = "7"
    dataset = DatasetSpec(hub_id="someone/data", split="test", local="thirdparty")
    request_type = "generate"
    headline = "acc"

    def load(self, source):
        return []

    def build(self, doc, ctx):
        return "", []

    def score(self, samples):
        return []
