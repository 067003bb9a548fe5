"""Chainlit handlers: they render the pipeline's events and nothing more."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import chainlit as cl
from chainlit.context import init_ws_context
from chainlit.data import get_data_layer
from chainlit.input_widget import Select, Slider
from chainlit.config import config as chainlit_config
from chainlit.server import app as fastapi_app, sio
from chainlit.session import WebsocketSession

from assistant.conversations import HISTORY_KEY, METRICS_KEY, ConversationStore, history_from_steps, metrics_from_steps
from assistant.demo import install_demo_routes
from assistant.ingest import UploadParser
from assistant.embedded import EmbeddedModelError, default_model_path, model_name
from assistant.page import OfflinePage
from assistant.partial_answer import PartialAnswerSaver
from assistant.events import AnswerStarted, AnswerWasThinking, Escalated, Queued, SourcesFound, Thinking, ThinkingFinished, Token, TurnFinished
from assistant import wiring
from assistant.record import TurnRecord
from assistant.settings import RoutingMode, SettingsError, load_settings
from assistant.storage import HeldWrites, LocalFileStorage, ensure_schema, thread_data_layer
from assistant.uploads import HASH_PREFIX_CHARS, UploadError, check_upload, install_upload_checks, save_upload, share_document
from assistant import step_clock, web_security
from assistant.accounts import Accounts, AccountsError, LoginThrottle
from rag.documents import DocumentSet, clean_display_name
from rag.citations import strip_citations
from rag.loaders import LoadError
from rag.progress import TerminalProgress, progress_message
from routing.client import ModelNotFound, explain_alias, on_request_sent
from routing.metrics import SessionMetrics, latency_figure, summary_rows
from routing.options import SERVER_DEFAULT_EFFORT
from routing.policy import RoutingOptions
import ui

log = logging.getLogger("assistant")

try:
    settings = load_settings()
except SettingsError as exc:
    print(exc, file=sys.stderr)
    raise

settings.data_dir.mkdir(parents=True, exist_ok=True)


def _auth_secret() -> str:
    """A per-installation secret for Chainlit's session tokens, created once and kept in the data folder."""
    path = settings.data_dir / "auth_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


os.environ.setdefault("CHAINLIT_AUTH_SECRET", _auth_secret())

objects = wiring.build(settings)
client, knowledge, pipeline = objects.client, objects.knowledge, objects.pipeline
upload_parser = UploadParser(chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
conversations = ConversationStore(settings.data_dir / "conversations")
file_storage = LocalFileStorage(settings.data_dir / "files")
documents_by_thread: dict[str, DocumentSet] = {}



# ------------------------------------------------------------------------------------------------
# Server set-up: schema, knowledge index, element files, the demo page
# ------------------------------------------------------------------------------------------------


knowledge_loaded = threading.Event()  # set once the first load of the knowledge folder has ended


def load_knowledge() -> None:
    """Once per process: load the cached index (or index the folder, with a progress bar), then watch it."""
    try:
        report = knowledge.refresh(progress=TerminalProgress())
        log.info("knowledge: %s", report.summary())
        pipeline.warm_up_search()
    finally:
        knowledge_loaded.set()
    knowledge.start_watching()


async def wait_for_knowledge() -> None:
    """A question asked right after a start waits (briefly) for the shared knowledge to load; past that, while a
    large folder is still being indexed, the user is told that only part of it was searched."""
    if knowledge_loaded.is_set() or await asyncio.to_thread(knowledge_loaded.wait, settings.knowledge_wait_s):
        return
    progress = knowledge.progress
    await cl.Message(
        content=(f"⏳ The shared knowledge folder is still being indexed ({progress.done} of {progress.total} files "
                 "so far): this answer searches only what is indexed already. Ask again once indexing has finished "
                 "for an answer from all of it."),
        author="assistant",
    ).send()


@cl.on_app_startup
async def startup() -> None:
    await ensure_schema(settings.sqlalchemy_url)
    await asyncio.to_thread(upload_parser.start)
    # Learn the served models now, so that no welcome waits for them (see ModelClient.server_health).
    await client.server_health(wait_s=0)
    # In the background: a large folder's first indexing must not hold up the server; chats show its progress.
    asyncio.get_running_loop().run_in_executor(None, load_knowledge)


@cl.on_app_shutdown
async def shutdown() -> None:
    knowledge.stop_watching()
    await client.close()
    upload_parser.close()


# The chat database's writes, held while a question is on its way to the model (see HeldWrites).
chat_writes = HeldWrites()


@cl.data_layer
def data_layer():
    layer = thread_data_layer(settings.sqlalchemy_url, file_storage, forget_thread, chat_writes)
    # Uploads of a refused type or size are never stored.
    layer.__class__ = web_security.guarded_data_layer(type(layer), int(settings.upload_max_mb * 1024 * 1024))
    return layer


async def forget_thread(thread_id: str) -> None:
    """A deleted thread takes its conversation state and its uploaded files with it."""
    documents_by_thread.pop(thread_id, None)
    await conversations.adelete(thread_id)
    uploads = uploads_folder(thread_id)
    if uploads.resolve().parent == (settings.data_dir / "uploads").resolve():
        await asyncio.to_thread(shutil.rmtree, uploads, True)


try:
    accounts = Accounts.from_settings(settings)
except AccountsError as exc:
    print(exc, file=sys.stderr)
    raise SettingsError(str(exc)) from None
login_throttle = LoginThrottle()

if accounts is not None:

    @cl.password_auth_callback
    async def password_login(username: str, password: str):
        if await web_security.check_login(accounts, login_throttle, username, password):
            return cl.User(identifier=username, metadata={"provider": "password"})
        return None

else:

    @cl.header_auth_callback
    def local_user(headers):
        # Single-user local mode: everyone reaching this loopback server is the one local user
        # (web_security offers it to loopback clients only, and refuses a non-loopback bind without passwords).
        return cl.User(identifier=settings.local_user, metadata={"provider": "local"})


def _install_get_routes() -> None:
    """Register our GET routes ahead of Chainlit's catch-all page route, which would shadow them."""
    first_new = len(fastapi_app.router.routes)

    install_demo_routes(fastapi_app, lambda: pipeline, settings, move_to_front=False)

    new_routes = fastapi_app.router.routes[first_new:]
    del fastapi_app.router.routes[first_new:]
    fastapi_app.router.routes[0:0] = new_routes


_install_get_routes()
step_clock.install()
install_upload_checks(fastapi_app, int(settings.upload_max_mb * 1024 * 1024), clean_display_name)
fastapi_app.add_middleware(OfflinePage)
# Last, so its checks run first (outermost), before any other middleware answers.
try:
    web_security.install(fastapi_app, sio, settings, storage=file_storage, bind_host=chainlit_config.run.host,
                         accounts=accounts, throttle=login_throttle)
except web_security.StartupRefused as exc:
    print(exc, file=sys.stderr)
    raise


# ------------------------------------------------------------------------------------------------
# Conversation state
# ------------------------------------------------------------------------------------------------


def thread_id() -> str:
    return cl.context.session.thread_id


def uploads_folder(tid: str | None = None) -> Path:
    """Where a conversation's uploads are kept (this session's conversation by default)."""
    return settings.data_dir / "uploads" / (tid if tid is not None else thread_id())


def documents() -> DocumentSet:
    """This conversation's uploads: loaded by on_chat_resume; read here only when a session reconnects after
    on_chat_end dropped them from memory (rare, and a small file)."""
    tid = thread_id()
    if tid not in documents_by_thread:
        documents_by_thread[tid] = document_set_from(tid, conversations.load(tid).get("documents"))
    return documents_by_thread[tid]


def new_document_set(tid: str) -> DocumentSet:
    """A conversation's uploads: its own scope of the knowledge base's one index."""
    return DocumentSet(
        backend=settings.bm25_backend.value,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        collection=knowledge.collection,
        scope=tid,
    )


def document_set_from(tid: str, stored: dict | None) -> DocumentSet:
    if stored:
        try:
            return DocumentSet.from_state(stored, backend=settings.bm25_backend.value,
                                          collection=knowledge.collection, scope=tid)
        except Exception as exc:  # a damaged state file must not stop the conversation
            log.warning("could not restore uploads of %s: %s", tid, exc)
    return new_document_set(tid)


async def load_documents(tid: str, state: dict) -> None:
    """Restore a thread's uploads from its stored state, off the event loop."""
    documents_by_thread[tid] = await asyncio.to_thread(document_set_from, tid, state.get("documents"))


def knowledge_sources() -> list[str]:
    return knowledge.sources()


async def save_documents() -> None:
    await conversations.aupdate(thread_id(), documents=documents().to_state())


def session_metrics() -> SessionMetrics:
    metrics = cl.user_session.get("metrics")
    if metrics is None:  # a resumed thread sets it from its answers' metadata (on_chat_resume)
        metrics = SessionMetrics()
        cl.user_session.set("metrics", metrics)
    return metrics


async def served_models() -> ui.ServedModels:
    """The roles' served ids from what the client knows (it never waits for the model server: llama.cpp
    answers its model list only between generations); the aliases while nothing is known yet."""
    health = await client.server_health()
    if health.models is None:
        return ui.ServedModels(settings.small_model, settings.large_model,
                               error=str(health.error) if health.error is not None else None)

    def served(alias: str) -> str:
        try:
            return explain_alias(alias, health.models).model
        except ModelNotFound:
            return alias

    return ui.ServedModels(served(settings.small_model), served(settings.large_model))


def embedded_model_in_use(models: ui.ServedModels) -> bool:
    """The bundled SmolLM2 answers: started by the launcher, or served under its own name by a server we were pointed at."""
    if settings.embedded_active:
        return True
    names = set()
    try:
        names.add(model_name(default_model_path()))
    except EmbeddedModelError:
        pass
    if settings.embedded_model_path:
        names.add(model_name(Path(settings.embedded_model_path)))
    return models.small in names


def chat_settings_widgets(values: dict, models: ui.ServedModels) -> list:
    defaults = RoutingOptions.from_settings(settings)
    mode = values.get("mode", RoutingMode(defaults.mode).value)
    labels = ui.mode_labels(models.small, models.large)
    return [
        Select(
            id="mode",
            label="Routing",
            items={label: value for value, label in labels.items()},
            initial_value=mode,
            description=ui.mode_description(models.small, models.large),
        ),
        Slider(id="temperature", label="Temperature", initial=values.get("temperature", defaults.temperature),
               min=0, max=1.5, step=0.1),
        Slider(id="max_tokens", label="Max answer tokens", initial=values.get("max_tokens", defaults.max_tokens),
               min=32, max=2048, step=32),
        Slider(id="min_answer_chars", label="Escalate answers shorter than (chars)",
               initial=values.get("min_answer_chars", defaults.min_answer_chars), min=0, max=400, step=10),
        Slider(id="confidence_threshold", label="Escalate below confidence (token probability quantile)",
               initial=values.get("confidence_threshold", defaults.confidence_threshold), min=0, max=1, step=0.05),
        Select(
            id="reasoning_effort",
            label=f"Reasoning effort of {models.large}",
            items={"Low": "low", "Medium": "medium", "High": "high", "The server's default": SERVER_DEFAULT_EFFORT},
            initial_value=values.get("reasoning_effort") or defaults.reasoning_effort or SERVER_DEFAULT_EFFORT,
            description="How long a reasoning model thinks before it answers: more effort, slower answers. "
                        "Models that do not reason ignore it.",
        ),
    ]


async def send_chat_settings(values: dict) -> dict:
    chosen = await cl.ChatSettings(chat_settings_widgets(values, await served_models())).send()
    merged = {**values, **(chosen or {})}
    cl.user_session.set("chat_settings", merged)
    return merged


def routing_options() -> RoutingOptions:
    return RoutingOptions.from_settings(settings).with_overrides(cl.user_session.get("chat_settings") or {})


async def mode_label(mode: str) -> str:
    models = await served_models()
    return ui.mode_labels(models.small, models.large).get(mode, mode)


# ------------------------------------------------------------------------------------------------
# Welcome: what the app does, the models in plain words, starter questions; operator details one click away
# ------------------------------------------------------------------------------------------------


def welcome_text(models: ui.ServedModels) -> str:
    sources = knowledge_sources()
    folder = settings.knowledge_dir.name
    documents_in = (f"the documents in the knowledge folder (`{folder}/`, being indexed now)"
                    if knowledge.progress.running and not sources
                    else f"the {len(sources)} documents in the knowledge folder (`{folder}/`)")
    text = (
        "**Ask questions about your team's documents.** The assistant searches "
        f"{documents_in} and any file you attach, answers with "
        "a language model running on this machine, and cites the passages it used: click a [1] in an answer "
        "to read that passage. Answers come from your documents, not from the internet.\n\n"
    )
    if models.error:
        text += (f"**Models:** not available: no model server answers yet ({settings.small_model} and "
                 f"{settings.large_model} are expected), so a question gets a message saying what to start.")
    elif embedded_model_in_use(models):
        why = " because no other model server was found" if settings.embedded_active else ""
        text += (f"**Models:** {models.small}, the tiny model bundled with the app, answers every question{why}.\n\n"
                 "⚠️ **The embedded model is for trying the app: its answers are weak** (it misreads, repeats and "
                 "invents). Start Foundry Local or another model server for useful answers.")
    elif models.one_model:
        text += f"**Models:** {models.small} answers every question (it serves both the small and the large role)."
    else:
        text += (f"**Models:** a small model, {models.small}, answers first; a larger one, {models.large}, takes "
                 "over when the small answer looks weak, and the answer says why.")
    return text + "\n\nTry a question below or type your own."


def starter_questions(limit: int = 4) -> list[tuple[str, str]]:
    """(label, question) from the knowledge folder: the title of each document, overview-like ones first."""
    titles: dict[str, str] = {}
    for chunk in knowledge.chunks:
        if chunk.position == 0 and "/" not in chunk.source:
            titles[chunk.source] = chunk.title
    ordered = sorted(titles, key=lambda source: (not any(w in source.lower() for w in ("overview", "readme", "intro")),
                                                 source))
    starters = []
    for source in ordered[:limit]:
        title = " ".join(titles[source].split())
        stem = source.rsplit(".", 1)[0]
        if not title or title in (source, stem):
            starters.append((stem, f"What is {source} about?"))
        else:
            starters.append((title if len(title) <= 40 else title[:38] + "…",
                             f"What do the documents say about {title[0].lower() + title[1:]}?"))
    return starters


@cl.set_chat_profiles
async def chat_profiles(user=None, language=None):
    # One profile: Chainlit shows its description above the message box of a new conversation (with the
    # starters) and hides it once the conversation starts. With a single profile there is no picker.
    return [cl.ChatProfile(name="Assistant", markdown_description=welcome_text(await served_models()),
                           icon="/favicon", default=True)]


@cl.set_starters
async def starters(user=None, language=None):
    return [cl.Starter(label=label, message=question) for label, question in starter_questions()]


async def model_status() -> str:
    """The roles' served models from what the client knows: a welcome never waits for the model server
    (llama.cpp answers its model list only between generations)."""
    health = await client.server_health()
    lines = []
    for role, alias in (("small", settings.small_model), ("large", settings.large_model)):
        if health.models is not None:
            try:
                resolution = explain_alias(alias, health.models)
                served = resolution.model
                lines.append(f"- {role}: `{served}`" + (f" (alias `{alias}`)" if served != alias else ""))
                if resolution.note:
                    lines[-1] += f" — {resolution.note}"
            except ModelNotFound as exc:  # says what is served instead
                lines.append(f"- {role}: `{alias}` — **not available**: {exc}")
        elif health.error is not None:
            lines.append(f"- {role}: `{alias}` — **not available**: {health.error}")
        else:
            lines.append(f"- {role}: `{alias}` (checking the model server…)")
    if health.models is not None and health.error is not None:
        lines.append(f"- last check failed: {health.error}")
    return "\n".join(lines)


async def show_operator_details(values: dict) -> None:
    models = await served_models()
    mode = values.get("mode", settings.routing_mode.value)
    report = knowledge.last_report
    knowledge_line = f"{len(knowledge_sources())} files, {knowledge.chunk_count} chunks"
    if report is not None and report.skipped:
        skipped = "; ".join(f"{ui.md_text(s.source)}: {ui.md_text(s.reason)}" for s in report.skipped[:5])
        knowledge_line += f" ({len(report.skipped)} skipped: {skipped})"
    server_line = f"Model server: `{settings.model_endpoint}`"
    if settings.embedded_active:
        server_line += (
            f" — the embedded llama.cpp model, because nothing answered at `{settings.configured_endpoint}` "
            "(start Foundry Local with `foundry service start` to use phi-4-mini and gpt-oss-20b)"
        )
    if settings.discovery:
        server_line += f"\nFound by: {settings.discovery}"
    # A step, not a message: it stays collapsed, and Chainlit keeps showing the welcome and starters.
    async with cl.Step(name="Server details", type="run", default_open=False, show_input=False,
                       icon="server") as step:
        step.output = (
            # The sentence other clients (benchmarks, socket tests) wait for: the conversation has started.
            "Answers come from your documents, by models on this machine.\n\n"
            f"{server_line}\n{await model_status()}\n\n"
            f"Routing: **{ui.mode_labels(models.small, models.large).get(mode, mode)}** (change it in the settings). "
            f"Knowledge: `{settings.knowledge_dir}`, {knowledge_line}.\n\n"
            "Attach files to ask about them (private to this conversation). "
            "Type `/docs` to list the documents in scope, `/remove NAME` to drop an upload, `/share NAME` to add "
            "one to the shared knowledge."
        )


# ------------------------------------------------------------------------------------------------
# Chat lifecycle
# ------------------------------------------------------------------------------------------------


@cl.on_chat_start
async def on_chat_start() -> None:
    log.info("new conversation %s", thread_id())
    values = await send_chat_settings({})
    await conversations.aupdate(thread_id(), chat_settings=values)
    await show_operator_details(values)
    if knowledge.progress.running and knowledge.chunk_count == 0:  # the folder's first indexing
        asyncio.create_task(show_indexing_progress())


async def show_indexing_progress() -> None:
    """A message that follows the knowledge folder's first indexing until it ends."""
    progress = knowledge.progress
    message = cl.Message(content=progress_message(progress.done, progress.total, progress.current), author="assistant")
    await message.send()
    while knowledge.progress.running:
        await asyncio.sleep(1.0)
        progress = knowledge.progress
        message.content = progress_message(progress.done, progress.total, progress.current)
        await message.update()
    message.content = f"Knowledge folder indexed: {len(knowledge_sources())} files, {knowledge.chunk_count} chunks."
    await message.update()


@cl.on_chat_resume
async def on_chat_resume(thread: dict) -> None:
    log.info("resuming conversation %s", thread["id"])
    state = await conversations.aload(thread["id"])
    await send_chat_settings(state.get("chat_settings") or {})
    # History and metrics are in the thread's own messages (their metadata), stored by Chainlit.
    steps = thread.get("steps") or []
    cl.user_session.set("history", history_from_steps(steps))
    cl.user_session.set("metrics", metrics_from_steps(steps))
    await load_documents(thread["id"], state)
    # A message sent here can lose a race with the browser loading the thread, so uploads are restored
    # silently; /docs lists them.
    restored = documents().documents()
    log.info("restored %d uploads for %s", len(restored), thread["id"])


@cl.on_settings_update
async def on_settings_update(values: dict) -> None:
    merged = {**(cl.user_session.get("chat_settings") or {}), **values}
    cl.user_session.set("chat_settings", merged)
    await conversations.aupdate(thread_id(), chat_settings=merged)
    mode = merged.get("mode", settings.routing_mode.value)
    await cl.Message(content=f"Settings saved. Routing from the next message: **{await mode_label(mode)}**.",
                     author="assistant").send()


@cl.on_chat_end
async def on_chat_end() -> None:
    # The browser left: the uploads stay stored (a resume loads them again), not in memory.
    documents_by_thread.pop(thread_id(), None)
    # A chat that goes away while its question waits for the model server leaves the line: the server
    # never sees a request nobody will read. (An answer already streaming is left to finish and is saved.)
    task = cl.context.session.current_task
    if cl.user_session.get("queued") and task is not None and not task.done():
        log.info("conversation %s left while queued; its question leaves the queue", thread_id())
        task.cancel()


@cl.on_stop
async def on_stop() -> None:
    log.info("user pressed stop in %s", thread_id())


@sio.on("stop")
async def stop_running_answer(sid):
    """Chainlit's own stop handler, less its "Task manually stopped." message: the stopped answer says
    itself what was kept (see ``answer``), so the reader gets one message, not two."""
    session = WebsocketSession.get(sid)
    if session is None:
        return
    init_ws_context(session)
    if session.current_task:
        session.current_task.cancel()
    await on_stop()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    # After an edit, Chainlit re-runs this handler without registering it as the current task; Stop needs it.
    cl.context.session.current_task = asyncio.current_task()
    # The chat database's writes wait from the question's arrival until its request is sent to the model.
    tid = thread_id()
    on_request_sent.set(lambda: chat_writes.release(tid))
    try:
        await handle_message(message)
    finally:
        chat_writes.release(tid)
        # The turn is over once what it wrote is stored: a crash right after it loses nothing it showed.
        await chat_writes.settled()


COMMANDS = ("/docs", "/remove", "/share")


async def handle_message(message: cl.Message) -> None:
    text = (message.content or "").strip()
    command = next((name for name in COMMANDS if text.startswith(name)), None)
    if message.elements or command or not text:
        chat_writes.release(thread_id())  # no question for the model: nothing to hold the writes for

    if message.elements:
        await handle_uploads(message.elements)
    argument = text[len(command):].strip() if command else ""
    if command == "/docs":
        await list_documents()
    elif command == "/remove":
        await remove_document(argument)
    elif command == "/share":
        await share_by_name(argument)
    elif text:
        await answer(text)


def queue_text(event: Queued) -> str:
    ahead = event.position - 1
    place = "next in line" if ahead == 0 else f"number {event.position} in line ({ahead} ahead of you)"
    seconds = event.expected_wait_s
    if seconds is None:
        wait = "the wait is not known yet (no answer has finished since the app started)"
    elif seconds < 60:  # rounded, so the notice changes (and is re-sent) only when the estimate really moves
        wait = f"about {max(5 * round(seconds / 5), 5):.0f} s to wait"
    else:
        wait = f"about {round(seconds / 60):.0f} min to wait"
    return (f"⏳ The model server is answering other questions: you are **{place}**, {wait}. "
            "This updates while you wait; Stop leaves the line.")


PARTIAL_NOTE = (
    "\n\n---\n*⚠️ This answer was cut short: the app stopped while it was being written. The text above is "
    "what had arrived; ask again for a full answer.*"
)


def partial_answer_saver(message: cl.Message) -> PartialAnswerSaver:
    """Saves the streaming answer, with a note that it is incomplete, straight to the data layer (not to the
    browser); the final ``send()`` replaces the saved text once the answer ends."""

    def snapshot() -> dict:
        step = message.to_dict()
        step["output"] = (step.get("output") or "") + PARTIAL_NOTE
        return step

    async def save(step: dict) -> None:
        data_layer = get_data_layer()
        if data_layer is not None:
            await data_layer.create_step(step)  # an upsert in the SQLAlchemy data layer

    return PartialAnswerSaver(snapshot, save)


async def show_answer_placeholder() -> cl.Message:
    """The answer's message, shown empty while the model reads the prompt, so that its first token only
    updates a message already on the page (mounting a new message in the browser took most of the time
    between the model's first token and the first word on screen). It is stored once it has text."""
    message = cl.Message(content="", author="assistant")
    message.persisted = True  # Chainlit's send() then shows it without storing an empty answer
    await message.send()
    message.persisted = False  # the final send() (or the partial saves) store it
    return message


async def answer(question: str) -> None:
    await wait_for_knowledge()
    history = cl.user_session.get("history") or []
    options = routing_options()
    message: cl.Message | None = None
    saver: PartialAnswerSaver | None = None
    waiting: cl.Message | None = None
    retrieval_shown: asyncio.Task | None = None
    streamed = ""
    record: TurnRecord | None = None
    thinking: ui.ThinkingStep | None = None  # a reasoning model's thinking, streamed above its answer
    stage = "searching the documents"  # what was going on, for a stop message true to what happened
    try:
        async for event in pipeline.run(question, history=history, options=options, documents=documents()):
            if isinstance(event, SourcesFound):
                # Rendered beside the turn, not before it: the request goes to the model server at once.
                retrieval_shown = asyncio.create_task(ui.show_retrieval(event, options.min_source_score))
                stage = "waiting for the model's first word"
            elif isinstance(event, Queued):
                cl.user_session.set("queued", True)
                chat_writes.release(thread_id())  # its request waits for the server: nothing to hold the writes for
                stage = "waiting in line for the model server"
                if waiting is None:
                    waiting = cl.Message(content=queue_text(event), author="assistant")
                    await waiting.send()
                elif waiting.content != queue_text(event):
                    waiting.content = queue_text(event)
                    await waiting.update()
            elif isinstance(event, AnswerStarted):
                cl.user_session.set("queued", False)
                if waiting is not None:
                    await waiting.remove()
                    waiting = None
                if retrieval_shown is not None:
                    await retrieval_shown
                message = await show_answer_placeholder()
                saver = partial_answer_saver(message)
                streamed = ""
                stage = f"waiting for the first word of {event.model}"
            elif isinstance(event, Thinking):
                if thinking is None and message is not None and not streamed:
                    # The thinking step goes above the answer: the answer's message comes with its first word.
                    await message.remove()
                    message = cl.Message(content="", author="assistant")
                    saver = partial_answer_saver(message)
                thinking = thinking or await ui.ThinkingStep.start()
                stage = "the model was thinking"
                await thinking.add(event.text)
            elif isinstance(event, AnswerWasThinking):
                # What streamed as the answer was thinking (a server that left "<think>" to the template): it
                # moves into a thinking step, and the answer starts again below it.
                if saver is not None:
                    await saver.finish()
                if message is not None:
                    await message.remove()
                thinking = await ui.ThinkingStep.start()
                await thinking.add(event.text)
                message = await show_answer_placeholder()
                saver = partial_answer_saver(message)
                streamed = ""
            elif isinstance(event, ThinkingFinished):
                if thinking is not None:
                    await thinking.finish(event.seconds, answered=event.answered)
                thinking = None
                stage = "waiting for the answer's first word, after the thinking"
            elif isinstance(event, Token):
                streamed += event.text
                await message.stream_token(event.text)
                saver.streamed()
            elif isinstance(event, Escalated):
                if saver is not None:
                    await saver.finish()
                if message is not None:
                    await message.remove()
                await ui.show_escalation(event.reason, event.from_model, event.draft, event.early, event.purpose)
                message, streamed = None, ""
                stage = "waiting for the large model's first word (the small model's draft is in the step above)"
            elif isinstance(event, TurnFinished):
                record = event.record
    except asyncio.CancelledError:
        cl.user_session.set("queued", False)
        if waiting is not None:
            await waiting.remove()
        if saver is not None:
            await saver.finish()
        if thinking is not None:
            await thinking.finish(None, answered=False)
        if streamed.strip():
            stopped = streamed.rstrip() + "\n\n*Stopped by you: the answer above is unfinished.*"
        else:
            stopped = f"*Stopped by you while {stage}: no answer was written.*"
        if message is None:
            message = cl.Message(content="", author="assistant")
        message.content = stopped
        message.metadata = {**(message.metadata or {}), HISTORY_KEY: strip_citations(streamed)}
        await message.send()
        remember(question, strip_citations(streamed))
        raise
    finally:
        if retrieval_shown is not None and not retrieval_shown.done():
            await asyncio.shield(retrieval_shown)

    if waiting is not None:
        await waiting.remove()
    if saver is not None:
        await saver.finish()
    await finish_answer(question, message, record)


async def finish_answer(question, message, record: TurnRecord | None) -> None:
    if record is None:  # the pipeline always ends with TurnFinished; this guards a bug, not a user path
        raise RuntimeError("the turn ended without its record")
    if message is None:
        message = cl.Message(content="", author="assistant")
    body = record.display_text()
    if not record.supported:
        body += ("\n\n> ℹ️ Nothing in the knowledge base or this conversation's uploads matched the question, "
                 "so this answer is not grounded in your documents.")
    for notice in record.notices:
        icon = {"error": "❌", "warning": "⚠️"}.get(notice.level, "ℹ️")
        body += f"\n\n> {icon} {notice.message}"
    # The cited sources are listed by the Sources element under the answer; each [n] in the text opens one.
    linked, views = ui.render_sources(record, anchor=message.id)
    elements = [ui.sources_element(views, message.id, record.dangling)] if views else []
    body = linked + body[len(record.display_text()):]
    failed = any(notice.level == "error" for notice in record.notices)
    if record.answered_by:
        footer = f"*Answered by `{record.answered_by}`*"
    elif record.text:
        cut_by = next((r.model for r in reversed(record.responses) if r.text), "the model")
        footer = f"*Cut short: not a complete answer (partial text from `{cut_by}`).*"
    else:
        footer = "*No model answered.*"
    routing_line = ui.routing_line(record)
    if routing_line:
        footer += f"\n\n{routing_line}"
    metrics = session_metrics()
    if record.metrics.legs:
        metrics.add(record.metrics)
    message.content = body.strip() + ui.ANSWER_FOOTER + footer
    message.elements = [ui.metrics_element(record, metrics.total_cost_usd)] + elements
    message.actions = [cl.Action(name="latency_chart", payload={}, label="Latency chart", icon="chart-column")]
    if failed or not record.answered_by:
        message.actions.insert(0, cl.Action(name="retry_answer", payload={"question": question},
                                            label="Retry", icon="rotate-ccw"))
    remember(question, record.history_text())
    # Chainlit stores the message with its metadata: a resumed thread rebuilds history and metrics from it.
    message.metadata = {**(message.metadata or {}), HISTORY_KEY: record.history_text(),
                        METRICS_KEY: record.metrics.to_dict()}
    # send() ends a stream and persists the message; for a message that streamed nothing it creates it.
    await message.send()


def remember(question: str, answer_text: str) -> None:
    history = cl.user_session.get("history") or []
    history = history + [{"role": "user", "content": question}, {"role": "assistant", "content": answer_text}]
    cl.user_session.set("history", history)


@cl.action_callback("retry_answer")
async def on_retry_answer(action: cl.Action) -> None:
    question = (action.payload or {}).get("question", "")
    if not question:
        return
    cl.context.session.current_task = asyncio.current_task()  # so that Stop cancels the retry too
    await cl.context.emitter.task_start()  # the page shows the turn running (and its Stop button)
    try:
        await cl.Message(content=f"Asking again: {question}", author="assistant").send()
        await answer(question)
    finally:
        await cl.context.emitter.task_end()


# ------------------------------------------------------------------------------------------------
# Uploads
# ------------------------------------------------------------------------------------------------


async def handle_uploads(elements: list) -> None:
    docs = documents()
    limit_bytes = int(settings.upload_max_mb * 1024 * 1024)
    for element in elements:
        name = clean_display_name(element.name or "unnamed file")
        path = getattr(element, "path", None)
        if not path:
            continue
        try:
            # Parsed in a separate, resource-limited process; kept only once it is accepted.
            await asyncio.to_thread(check_upload, Path(path), limit_bytes)
            parsed = await upload_parser.parse(Path(path), name)
            stored = await asyncio.to_thread(
                save_upload, Path(path), uploads_folder(), limit_bytes, name
            )
            added = await asyncio.to_thread(docs.add_chunks, name, parsed.sha256, parsed.pages, parsed.chunks)
        except (UploadError, LoadError) as exc:
            try:  # a refused file is neither kept nor previewed (an encrypted PDF's preview prompts for its password)
                await element.remove()
            except Exception as remove_error:
                log.warning("could not remove refused upload %s: %s", name, remove_error)
            await cl.Message(content=f"❌ **{ui.md_text(name)}** was not added: {ui.md_text(str(exc))}",
                             author="assistant").send()
            continue
        pages = f"{added.pages} pages, " if added.pages else ""
        actions = [
            cl.Action(name="share_document", payload={"name": added.name, "upload": stored.name},
                      label="Add to shared knowledge", icon="share"),
            cl.Action(name="remove_document", payload={"name": added.name}, label="Remove", icon="trash"),
        ]
        await cl.Message(
            content=f"📄 **{ui.md_text(added.name)}** is ready for this conversation: {pages}{added.chunks} chunks, "
            f"{added.tokens} tokens. Only this conversation can search it.",
            actions=actions,
            author="assistant",
        ).send()
    await save_documents()


async def list_documents() -> None:
    docs = documents().documents()
    sources = knowledge_sources()
    lines = [f"**Shared knowledge** (`{settings.knowledge_dir.name}/`): {len(sources)} files, "
             f"{knowledge.chunk_count} chunks."]
    for source in sources[:50]:
        lines.append(f"- {ui.md_text(source)}")
    lines.append("\n**This conversation's uploads:**" if docs else "\nNo uploads in this conversation.")
    for doc in docs:
        lines.append(f"- {ui.md_text(doc.name)}: {doc.chunks} chunks" + (f", {doc.pages} pages" if doc.pages else ""))
    await cl.Message(content="\n".join(lines), author="assistant").send()


async def remove_document(name: str) -> None:
    if not name:
        await cl.Message(content="Say which upload to remove: `/remove NAME` (see `/docs`).", author="assistant").send()
        return
    removed = documents().remove(name)
    await save_documents()
    shown = ui.md_text(name)
    text = f"Removed **{shown}** from this conversation." if removed else f"No upload named **{shown}** here (see `/docs`)."
    await cl.Message(content=text, author="assistant").send()


@cl.action_callback("remove_document")
async def on_remove_document(action: cl.Action) -> None:
    await remove_document(action.payload.get("name", ""))


@cl.action_callback("share_document")
async def on_share_document(action: cl.Action) -> None:
    # The client names an upload by its stored name only; it is looked up in this conversation's own folder,
    # so no session can publish another conversation's upload.
    await share_upload(str(action.payload.get("name", "")), str(action.payload.get("upload", "")))


async def share_by_name(name: str) -> None:
    """``/share NAME``: the same as the upload's button, which a reopened thread no longer shows (Chainlit
    does not keep actions), e.g. after the app stopped in the middle of a share."""
    if not name:
        await cl.Message(content="Say which upload to share: `/share NAME` (see `/docs`).", author="assistant").send()
        return
    doc = next((d for d in documents().documents() if d.name == name), None)
    folder = uploads_folder()
    stored = (next((f for f in folder.glob(f"{doc.sha256[:HASH_PREFIX_CHARS]}-*") if f.is_file()), None)
              if doc is not None and folder.is_dir() else None)
    if stored is None:
        await cl.Message(content=f"No upload named **{ui.md_text(name)}** here (see `/docs`).", author="assistant").send()
        return
    await share_upload(doc.name, stored.name)


async def share_upload(name: str, upload_id: str) -> None:
    folder = uploads_folder().resolve()
    source = (folder / upload_id).resolve()
    if not upload_id or source.parent != folder or not source.is_file():
        await cl.Message(content="That upload is not available any more.", author="assistant").send()
        return
    try:
        target, created = await asyncio.to_thread(share_document, source, name, settings.knowledge_dir / "uploads")
    except UploadError as exc:
        await cl.Message(content=f"❌ Could not share **{ui.md_text(name)}**: {exc}", author="assistant").send()
        return
    await asyncio.to_thread(knowledge.refresh)
    where = target.relative_to(settings.knowledge_dir)
    shown = ui.md_text(name)
    text = (f"**{shown}** is now shared knowledge (`{where}`), searchable in every conversation."
            if created else f"**{shown}** was already in the shared knowledge (`{where}`).")
    await cl.Message(content=text, author="assistant").send()


# ------------------------------------------------------------------------------------------------
# Session view
# ------------------------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


@cl.action_callback("latency_chart")
async def on_latency_chart(action: cl.Action) -> None:
    metrics = session_metrics()
    if not metrics.turns:
        await cl.Message(content="No answers measured yet in this conversation.", author="assistant").send()
        return
    rows = summary_rows(metrics)
    table = ["| model | answers | mean total | p95 total | mean TTFT | p95 TTFT | mean tok/s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [fmt_ms(row["mean_total_ms"]), fmt_ms(row["p95_total_ms"]), fmt_ms(row["mean_ttft_ms"]),
                 fmt_ms(row["p95_ttft_ms"]), f"{row['mean_tokens_per_s']:.1f}" if row["mean_tokens_per_s"] else "–"]
        table.append(f"| `{row['model']}` | {row['count']} | " + " | ".join(cells) + " |")
    chart = cl.Plotly(name="Latency per message", figure=ui.follow_theme(latency_figure(metrics)).update_xaxes(type="category"),
                       display="inline")
    await cl.Message(
        content="Latency per message (retrieval, waiting for the first token, generation), by model.\n\n"
        + "\n".join(table)
        + f"\n\nSimulated cloud cost of this conversation: ${metrics.total_cost_usd:.6f}.",
        elements=[chart],
        author="assistant",
    ).send()
