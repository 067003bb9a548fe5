"""The app's objects built from the settings, in one place, for every entry point.

The chat app, the launcher and the command-line tools (``compare``, ``bench``, ``evaluate``) load the
settings with :func:`settings_for_command` (or :func:`assistant.settings.load_settings` where a bad
setting should stop a server) and build the model client, the knowledge base and the pipeline with
:func:`build`, so each is made the same way everywhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from assistant.pipeline import Pipeline
from assistant.settings import Settings, SettingsError, load_settings
from rag.knowledge import KnowledgeBase
from routing.client import ModelClient


def settings_for_command() -> Settings | None:
    """The settings, or None after printing which variable is wrong (the command then exits with 2)."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return None


def knowledge_base(settings: Settings) -> KnowledgeBase:
    """The shared knowledge folder's index (cached under ``cache_dir/index``); call ``refresh()`` to load it."""
    return KnowledgeBase(
        settings.knowledge_dir,
        settings.cache_dir / "index",
        backend=settings.bm25_backend.value,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
    )


@dataclass
class App:
    settings: Settings
    client: ModelClient
    knowledge: KnowledgeBase | None
    pipeline: Pipeline

    async def close(self) -> None:
        await self.client.close()


def build(settings: Settings, *, with_knowledge: bool = True) -> App:
    """Client, knowledge base (not yet refreshed; None when ``with_knowledge`` is false) and pipeline."""
    client = ModelClient.from_settings(settings)
    knowledge = knowledge_base(settings) if with_knowledge else None
    return App(settings, client, knowledge, Pipeline(settings, client, knowledge))
