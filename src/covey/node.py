"""The node: builds every component from one Settings and runs them under one task group."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from covey import __version__
from covey.api.app import build_app
from covey.api.doctor import DoctorRoutes
from covey.api.invite import InviteRoutes
from covey.api.ledger import LedgerRoutes
from covey.api.openai import OpenAIRoutes
from covey.api.status import StatusRoutes
from covey.config import Settings
from covey.engine import catalog, embedded
from covey.engine.remote import RemoteBackend
from covey.engine.supervisor import EngineOptions, LocalEngine
from covey.errors import Unavailable
from covey.fetch import inventory, resolve
from covey.fetch.manifest import ManifestError, build_manifest
from covey.fetch.serve import FileShare
from covey.fetch.wanted import WantedModel
from covey.health.monitor import HealthMonitor
from covey.ledger.chain import Ledger
from covey.ledger.credits import parameters_from_size_label
from covey.ledger.handover import Handover
from covey.ledger.service import LEDGER_FILE, LedgerService
from covey.ledger.witness import Witness
from covey.memory.embedder import Embedder
from covey.memory.routes import MemoryRoutes
from covey.memory.service import MemoryService
from covey.memory.store import MemoryStore
from covey.mesh import identity
from covey.mesh.addresses import advertised, host_interfaces
from covey.mesh.authority import AuthorityLink
from covey.mesh.discovery import LanDiscovery, lan_addresses
from covey.mesh.peer_api import VERIFIER, build_peer_app
from covey.mesh.peer_serve import PeerListener, aiohttp_server
from covey.mesh.peer_transport import HttpPeerTransport
from covey.mesh.policy import MeshPolicy
from covey.mesh.records import (
    MAX_BYTES,
    MAX_SAMPLES,
    MAX_TOKENS_PER_S,
    MAX_TTFT_MS,
    NodeRecord,
    plausible,
)
from covey.mesh.runtime import MeshRuntime
from covey.mesh.setup import open_mesh
from covey.mesh.state import MeshState
from covey.mesh.transport import tls_identity
from covey.metrics.baseline import BaselineKeeper
from covey.metrics.export import registry_for
from covey.metrics.samples import ModelMeter
from covey.metrics.share import ShareStore
from covey.router.budget import Budget
from covey.router.fairshare import Policy as FairShare
from covey.router.fallback import Fallback
from covey.router.proxy import Relay
from covey.router.table import Engine, ModelTable, ServedModel
from covey.types import EngineFailed, EngineState, ModelCard, ModelId
from covey.verify import fingerprint
from covey.verify.auditor import Auditor
from covey.verify.verdicts import Policy, VerdictBook
from covey.web import routes as web_routes

log = logging.getLogger(__name__)

RUNTIME_FILE = "node.json"  # where a running node says which ports it got
HANDOVER_INTERVAL_S = 5.0  # how often a node looks whether the ledger's keeper changed
WITNESS_INTERVAL_S = 10.0  # how often a member looks at the keeper's newest checkpoint
MEMORY_FILE = "memory.sqlite3"
MEMORY_INDEX_FILE = "memory.usearch"


@dataclass
class BrokenEngine:
    """Stands in for an engine that could not be started (bad file, too big): shows why."""

    reason: str
    kind: str = "llama.cpp"
    pid: None = None

    @property
    def state(self) -> EngineState:
        return EngineFailed(reason=self.reason)


class Node:
    def __init__(self, settings: Settings,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self.table = ModelTable()
        self.identity = identity.load_or_create(settings.data_dir)
        self.name = settings.node_name or socket.gethostname()
        self.url: str | None = None
        self._engines: list[LocalEngine] = []
        self._backends: list[RemoteBackend] = []
        self._keepers: dict[ModelId, asyncio.Task[None] | None] = {}  # None: not started yet
        self._tasks: asyncio.TaskGroup | None = None
        self._prepared = False
        self._invites: InviteRoutes | None = None
        self._share: ShareStore | None = None
        self._ledger: LedgerService | None = None  # issue 15: receipts and the ledger
        self._handover: Handover | None = None  # sends a new keeper this node's receipts
        self._ledger_db: Ledger
        # Issue 14: this node's verdicts on peers' models and its own models' fingerprints.
        self.verdicts = VerdictBook(Policy(
            mode="enforce" if settings.verify == "enforce" else "observe",
            fails_to_suspect=settings.verify_fails, demote_s=settings.verify_demote_s))
        self.fingerprints: dict[str, dict[str, Any]] = {}
        self._memory: MemoryService | None = None  # issue 16
        # Issue 12: models whose file comes from peers, the files offered to members, and
        # each local file's sha256 (published in model ads before any fingerprint).
        self._wanted: dict[ModelId, WantedModel] = {}
        self._files = FileShare(enabled=settings.share_models, mbps=settings.share_models_mbps)
        self._file_sha: dict[ModelId, str] = {}
        self._embedder_lock = asyncio.Lock()
        self._fair_share = FairShare(headroom_share=settings.headroom)
        self._hardware = catalog.HardwareReader(settings.fast_memory_bytes, cap=MAX_BYTES)

    # --- building -------------------------------------------------------------------

    def _meter(self) -> ModelMeter:
        return ModelMeter(window_s=self.settings.metrics_window_s)

    def _engine_options(self) -> EngineOptions:
        s = self.settings
        return EngineOptions(ctx_size=s.ctx_size, parallel=s.parallel, threads=s.threads,
                             gpu_layers=s.gpu_layers, embeddings=s.embeddings,
                             start_timeout_s=s.engine_start_timeout_s,
                             backoff_s=s.restart_backoff_s, backoff_max_s=s.restart_backoff_max_s)

    def _model_files(self) -> list[tuple[Path, catalog.ModelFileError | None]]:
        """The GGUFs to serve (fetch/resolve.py): `--model` values, or the default embedded
        model; each with the error that kept it from being had. Model ids no file here has
        become rows fetched from peers once the mesh is up (`self._wanted`). Blocking:
        embedded models are put in place and URLs downloaded, with progress."""
        s = self.settings
        chosen = [embedded.DEFAULT.name] if s.serves_default_model else list(s.models)
        files, wanted = resolve.model_files(chosen, s.data_dir, self.progress)
        for mid in wanted:
            self._wanted[ModelId(mid)] = WantedModel(mid, s.data_dir, lambda: [], None,
                                                     self._serve_fetched)
        return files

    def prepare(self) -> None:
        """Read every configured GGUF; a bad one becomes a failed row, never a dead node.

        Blocking (file reads, default-model assembly); run() calls it if nobody did."""
        if self._prepared:
            return
        self._prepared = True
        s = self.settings
        memory = catalog.fast_memory_bytes(s.fast_memory_bytes)
        for path, problem in self._model_files():
            card: ModelCard | None = None
            try:
                if problem is not None:
                    raise problem
                card = catalog.read_card(path)
                catalog.check_fits(card, memory)
            except catalog.ModelFileError as exc:
                log.error("model %s: %s", path.name, exc)
                card = card or _card_for_unreadable(path)
                self._add(card, BrokenEngine(str(exc)), card.id)
                continue
            if card.id in self.table.models:
                log.warning("model %s: listed twice; serving it once", card.id)
                continue
            engine = LocalEngine(card, self._engine_options(), s.data_dir / "logs")
            self._engines.append(engine)
            self._add(card, engine, card.id)
        for mid, wanted in self._wanted.items():
            card = ModelCard(id=mid, path=None, size_bytes=None, quantization=None,
                             architecture=None, context_length=None)
            self._add(card, wanted, mid)
        for url in s.backends:
            self._backends.append(RemoteBackend(url, on_models=self._sync_backend_models))

    def _add(self, card: ModelCard, engine: Engine, upstream_name: str) -> ServedModel:
        """A row this node serves itself (an engine, a backend's model, a placeholder), with
        the settings' slots, queue and fair-share rules."""
        s = self.settings
        model = ServedModel(card=card, engine=engine, upstream_name=upstream_name,
                            slots=s.parallel, max_queue=s.max_queue, meter=self._meter(),
                            fair_share=self._fair_share)
        self.table.add(model)
        if self.settings.baseline and not isinstance(model.engine, BrokenEngine | WantedModel):
            self._keepers[model.id] = None
            self._start_keepers()
        return model

    def _start_keepers(self) -> None:
        if self._tasks is None:
            return  # run() starts them once the task group exists
        s = self.settings
        for mid, task in self._keepers.items():
            if task is None:
                keeper = BaselineKeeper(self.table.models[mid], s.data_dir,
                                        s.baseline_max_tokens, s.baseline_settle_s,
                                        s.baseline_refresh_s, self._fingerprint)
                self._keepers[mid] = self._tasks.create_task(
                    keep_running(keeper.run, f"baseline:{mid}"), name=f"baseline:{mid}")

    def _sync_backend_models(self, backend: RemoteBackend) -> None:
        """Mirror an attached backend's model list into the table (added and removed)."""
        mine = {mid for mid, m in self.table.models.items() if m.engine is backend}
        for name in backend.models:
            mid = ModelId(name)
            if mid in self.table.models:
                continue
            card = ModelCard(id=mid, path=None, size_bytes=None, quantization=None,
                             architecture=None, context_length=None)
            self._add(card, backend, name)
            log.info("model %s: served by attached backend %s", mid, backend.base_url)
        for gone in mine - {ModelId(n) for n in backend.models}:
            self.table.remove(gone)
            task = self._keepers.pop(gone, None)
            if task is not None:
                task.cancel()
            log.info("model %s: no longer listed by %s", gone, backend.base_url)

    # --- running --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_listening: Callable[[str], None] | None = None
                  ) -> None:
        """Serve until `stop` is set, then shut down: in-flight requests get the grace
        period, engines are terminated, the runtime file is removed."""
        s = self.settings
        self.prepare()
        await asyncio.to_thread(catalog.gpu_memory_bytes)  # asked once, off the event loop
        self._share = share = await asyncio.to_thread(ShareStore.open, s.data_dir)
        if s.ledger:
            self._ledger_db = await asyncio.to_thread(Ledger, s.data_dir / LEDGER_FILE)
        mesh_state, bootstrap = await open_mesh(s.data_dir, self.identity, s.join,
                                                s.cert_validity_s)
        tls = tls_identity(self.identity.key, s.data_dir)
        connector = engine_connector()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
        mesh = MeshRuntime(mesh_state, tls, addresses=[], describe=self._describe,
                           measure=self._measure,
                           interval_s=s.gossip_interval_s, bootstrap=bootstrap)
        # No cookie jar: engines set none, and filtering one costs every request.
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session, \
                HttpPeerTransport(mesh.sign) as transport:
            mesh.transport = transport
            # A contended engine's queue orders peers by their standing in the ledger.
            relay = Relay(session, transport, s.peer_timeout_s, on_answer=share.record,
                          standing=self._standing)
            link = AuthorityLink(mesh_state, transport)
            if s.ledger:
                # Who keeps the mesh ledger, asked each time: the mesh policy may move it.
                def keeper_id() -> str | None:
                    return mesh_state.keeper_id(time.time())

                def keeper_record() -> NodeRecord | None:
                    return mesh_state.keeper_record(time.time())

                self._ledger = LedgerService(
                    self._ledger_db, mesh_state.info.mesh_id, self.identity, transport,
                    records=lambda: mesh.peers(time.time()),
                    keeper=lambda: keeper_id() == self.identity.node_id,
                    keeper_record=keeper_record,
                    facts=self._model_facts,
                    suspect=lambda node, model: s.verify != "off" and self.verdicts.status(
                        node, model, time.time()) == "suspect", data_dir=s.data_dir)
                # Every member but the keeper witnesses it.
                self._ledger.witness = Witness(
                    mesh_state.info.mesh_id, self.identity, transport, keeper_record,
                    lambda: mesh.peers(time.time()), s.data_dir,
                    own_receipts=self._ledger.own_receipts)
                self._handover = Handover(self.identity.node_id, s.data_dir, keeper_id,
                                          keeper_record, self._ledger_db.entries,
                                          self._ledger.send_receipt)
                relay.receipts = self._ledger
            mesh.authority = link
            if s.memory:
                self._memory = await self._memory_service(session, transport, mesh)
            self._invites = InviteRoutes(mesh, link)
            health = HealthMonitor(mesh, s.health_interval_s, s.health_timeout_s)
            routes = OpenAIRoutes(self.table, relay, self.identity.node_id, self.name, mesh,
                                  health=health, tiers=self._tier_policy(mesh_state).current,
                                  fallback=self._fallback())
            peer_app = build_peer_app(mesh_state, tls.fingerprint, serve=routes.serve_for_peer,
                                      engines=self._engine_states, authority=link,
                                      ledger=self._ledger, memory=self._memory,
                                      files=self._files)
            peer_runner = web.AppRunner(peer_app, handler_cancellation=True, access_log=None,
                                        shutdown_timeout=s.shutdown_grace_s)
            await peer_runner.setup()
            # Peers' streamed prompts are served off the socket; the app gets the rest.
            listener = PeerListener(aiohttp_server(peer_runner), peer_app[VERIFIER], mesh_state,
                                    routes.admit_peer_stream)
            mesh_port = await listener.start(s.mesh_host, s.mesh_port, tls.server_context())
            mesh.addresses = advertised(s.mesh_host, mesh_port, s.advertise,
                                        host_interfaces())
            lan = lan_addresses(s.mesh_host) if s.mdns else []
            discovery = LanDiscovery(mesh_state.info.mesh_id, self.identity.node_id,
                                     tls.fingerprint, lan, mesh_port, mesh.found) if lan else None
            # handler_cancellation: a client that hangs up cancels its handler at once, which
            # closes the engine connection and frees the slot.
            runner = web.AppRunner(self._app(routes), handler_cancellation=True,
                                   access_log=None, shutdown_timeout=s.shutdown_grace_s)
            await runner.setup()
            site = web.TCPSite(runner, s.host, s.port)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://{_url_host(s.host)}:{port}"
            self._write_runtime(port, mesh.addresses)
            log.info("node %s (%s) listening on %s; mesh %s on %s", self.identity.node_id,
                     self.name, self.url, mesh_state.info.mesh_id, ", ".join(mesh.addresses))
            freeze_startup_heap()
            if on_listening:
                on_listening(self.url)
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    for engine in self._engines:
                        name = f"engine:{engine.card.id}"
                        tasks.create_task(keep_running(engine.run, name), name=name)
                    for backend in self._backends:
                        name = f"backend:{backend.base_url}"
                        tasks.create_task(keep_running(backend.run, name), name=name)
                    self._start_keepers()
                    tasks.create_task(keep_running(mesh.run, "mesh"), name="mesh")
                    tasks.create_task(keep_running(health.run, "health"), name="health")
                    tasks.create_task(keep_running(share.run, "mesh-share"), name="mesh-share")
                    if (ledger := self._ledger) is not None:
                        tasks.create_task(keep_running(
                            lambda: ledger.checkpoints(s.data_dir, s.checkpoint_interval_s,
                                                       s.checkpoint_sink_url),
                            "ledger-checkpoints"), name="ledger-checkpoints")
                    if ledger is not None and (witness := ledger.witness) is not None:
                        tasks.create_task(keep_running(
                            lambda: witness.run(WITNESS_INTERVAL_S), "ledger-witness"),
                            name="ledger-witness")
                    if (handover := self._handover) is not None:
                        tasks.create_task(keep_running(
                            lambda: handover.run(HANDOVER_INTERVAL_S), "ledger-handover"),
                            name="ledger-handover")
                    if s.verify != "off" and routes.dispatcher is not None:
                        routes.dispatcher.verdicts = self.verdicts
                        auditor = Auditor(self.table, mesh.peers, transport, self.verdicts,
                                          s.verify_interval_s, s.peer_timeout_s,
                                          local_sha=self._sha,
                                          observed=routes.dispatcher.observed_speeds)
                        tasks.create_task(keep_running(auditor.run, "verify"), name="verify")
                    if discovery is not None:
                        tasks.create_task(keep_running(discovery.run, "mdns"), name="mdns")
                    tasks.create_task(keep_running(self._offer_files, "file-share"),
                                      name="file-share")
                    for mid, wanted in self._wanted.items():
                        wanted.peers = lambda: mesh.peers(time.time())
                        wanted.transport = transport
                        tasks.create_task(keep_running(wanted.run, f"fetch:{mid}"),
                                          name=f"fetch:{mid}")
                    if (memory := self._memory) is not None:
                        tasks.create_task(keep_running(
                            lambda: memory.run(warm=bool(s.share_memory)), "memory"),
                            name="memory")
                    await stop.wait()
                    log.info("stopping: letting in-flight requests finish (up to %.0fs)",
                             s.shutdown_grace_s)
                    await runner.cleanup()
                    raise _Stop
            except* _Stop:
                pass
            finally:
                self._tasks = None
                await runner.cleanup()
                share.close()  # after the last client request: its count is written too
                await listener.close(s.shutdown_grace_s)
                await peer_runner.cleanup()
                if self._ledger is not None:  # after the peer listener: every answer ended
                    await self._ledger.flush(s.shutdown_grace_s)
                if s.ledger:
                    self._ledger_db.close()  # no receipt in flight now
                if self._memory is not None:
                    self._memory.store.close()
                with contextlib.suppress(OSError):
                    (s.data_dir / RUNTIME_FILE).unlink()
        log.info("stopped")

    # --- model files (issue 12) --------------------------------------------------------

    async def _launch(self, path: Path) -> ServedModel:
        """Serve the GGUF at `path` now, while the node runs (a model fetched from peers,
        the memory's embedder started on first use), in place of any placeholder row for
        its id. Raises catalog.ModelFileError for a file that cannot be served here."""
        s = self.settings
        card = await asyncio.to_thread(catalog.read_card, path)
        catalog.check_fits(card, catalog.fast_memory_bytes(s.fast_memory_bytes))
        engine = LocalEngine(card, self._engine_options(), s.data_dir / "logs")
        self._engines.append(engine)
        self.table.remove(card.id)
        served = self._add(card, engine, card.id)
        if self._tasks is not None:
            self._tasks.create_task(keep_running(engine.run, f"engine:{card.id}"),
                                    name=f"engine:{card.id}")
        return served

    async def _serve_fetched(self, path: Path) -> None:
        """A model fetched from peers landed at `path`: serve it like any GGUF."""
        try:
            served = await self._launch(path)
        except catalog.ModelFileError as exc:
            log.error("model %s: %s", path.name, exc)
            wanted = self._wanted.get(ModelId(path.stem))
            if wanted is not None:
                wanted.state = EngineFailed(str(exc))
            return
        await self._offer(served.id, path)

    async def _offer_files(self) -> None:
        """Learn each local model file's sha256 (from its sidecar, else by reading it once)
        and offer it to members; the first peer asking then finds its manifest ready."""
        for m in list(self.table.models.values()):
            if isinstance(m.engine, LocalEngine) and m.card.path is not None:
                await self._offer(m.id, m.card.path)

    async def _offer(self, model_id: ModelId, path: Path) -> None:
        # With sharing on, a file without a sidecar is read once for its sha256 and its
        # manifest together; prepare() below then finds the manifest built.
        digest_of = ((lambda p: build_manifest(p).sha256) if self._files.enabled
                     else catalog.sha256_file)
        try:
            facts = await asyncio.to_thread(inventory.describe, path, datetime.now(UTC),
                                            digest_of)
        # Unreadable, or changed while it was read (ManifestError): offered at next start.
        except (OSError, ManifestError) as exc:
            log.warning("model %s: cannot read its file to offer it: %s", model_id, exc)
            return
        self._file_sha[model_id] = facts.sha256
        self._files.register(facts.sha256, path)
        await self._files.prepare()

    def _fetch_status(self) -> dict[str, Any]:
        return {str(mid): w.progress for mid, w in self._wanted.items()}

    # --- memory (issue 16) -----------------------------------------------------------

    async def _memory_service(self, session: aiohttp.ClientSession,
                              transport: HttpPeerTransport, mesh: MeshRuntime
                              ) -> MemoryService:
        s = self.settings
        store = await asyncio.to_thread(MemoryStore, s.data_dir / MEMORY_FILE,
                                        s.data_dir / MEMORY_INDEX_FILE)
        embedder = Embedder(session, lambda: f"{self.url}/v1", s.api_key,
                            self._memory_model()[1], ready=self._embedder_ready)
        return MemoryService(store, embedder, shared=frozenset(s.share_memory),
                             node_id=self.identity.node_id, name=self.name,
                             peers=lambda: mesh.peers(time.time()), transport=transport)

    def _memory_model(self) -> tuple[embedded.EmbeddedModel | None, ModelId]:
        """The memory's embedding model: the embedded one `--memory-model` names (if it
        does) and the model id requests name."""
        named = embedded.find(self.settings.memory_model)
        return named, ModelId(named.model_id if named else self.settings.memory_model)

    async def _embedder_ready(self) -> None:
        """Have the memory's embedding model ready to answer: a model this node serves is
        waited for; an embedded one (the default, all-MiniLM-L6-v2) is fetched and started
        on first use, so a node that keeps no memories runs no extra engine; any other id
        is left to the router (a peer serves it)."""
        s = self.settings
        named, model_id = self._memory_model()
        async with self._embedder_lock:
            served = self.table.models.get(model_id)
            if served is None and named is not None and self._tasks is not None:
                try:
                    path = await asyncio.to_thread(embedded.model_path, named, s.data_dir)
                    served = await self._launch(path)
                except catalog.ModelFileError as exc:
                    raise Unavailable(f"the memory's embedding model cannot be had: {exc}",
                                      retry_after=30) from exc
                log.info("memory: started the embedding model %s", served.id)
            if served is None or not isinstance(served.engine, LocalEngine):
                return
            deadline = time.monotonic() + s.engine_start_timeout_s
            # "stopped" until its task first runs, then "starting" until it loads. Engines
            # report their state by attribute, not by event: polled, with a deadline.
            while served.engine.state.kind in ("stopped", "starting") \
                    and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            state = served.engine.state
            if state.kind != "ready":
                raise Unavailable(f"the memory's embedding model {model_id} is {state.kind}"
                                  + (f": {state.reason}" if isinstance(state, EngineFailed)
                                     else ""), retry_after=5)

    def _tier_policy(self, state: MeshState) -> MeshPolicy:
        """The mesh's tier policy: issued here on the mesh's creator, else learned from
        records (this node's own until then). The mesh state carries it in our records."""
        own = self.settings.tier_policy()
        if self.settings.ledger_keeper and state.authority is None:
            log.warning("ledger: --ledger-keeper ignored: only the mesh's creator designates "
                        "the keeper")
        state.policy = (MeshPolicy.issue(own, state.authority, state.data_dir, time.time(),
                                         ledger_keeper=self.settings.ledger_keeper)
                        if state.authority is not None else
                        MeshPolicy(own, mesh_id=state.info.mesh_id,
                                   authority_public_key=state.info.authority_public_key))
        return state.policy

    def _app(self, routes: OpenAIRoutes) -> web.Application:
        s = self.settings
        app = build_app(bind_host=s.host, api_key=s.api_key,
                        allowed_hosts=frozenset(s.allowed_hosts), max_body_bytes=s.max_body_bytes)
        routes.add_to(app)
        metrics = registry_for(self.table, self._share, lambda: self._ledger)
        StatusRoutes(self.table, metrics, self.identity.node_id, self.name,
                     s.metrics_window_s, routes, routes.mesh,
                     baseline_tokens=s.baseline_max_tokens, share=self._share,
                     memory=self._memory.status if self._memory else None,
                     fetches=self._fetch_status).add_to(app)
        if routes.mesh is not None and routes.health is not None:
            DoctorRoutes(self.table, routes.mesh, routes.health,
                         s.mdns and bool(lan_addresses(s.mesh_host)),
                         lambda: self.url or "").add_to(app)
        if self._invites is not None:
            self._invites.add_to(app)
        if self._memory is not None:
            MemoryRoutes(self._memory).add_to(app)
        if self._ledger is not None:
            LedgerRoutes(self._ledger).add_to(app)
        web_routes.add_to(app)
        return app

    def _fallback(self) -> Fallback | None:
        s = self.settings
        if not s.providers:
            return None
        for p in s.providers:
            log.info("provider %s: %s, key %s, models %s", p.name, p.base_url,
                     "set" if p.enabled else f"NOT set (${p.key_env}): disabled",
                     ", ".join(p.models))
        budget = Budget(s.fallback_per_client, s.fallback_window_s,
                        {p.name: p.hourly_cap for p in s.providers})
        return Fallback(s.providers, budget, keyed=bool(s.api_key), window_s=s.fallback_window_s)

    def _engine_states(self) -> dict[str, dict[str, Any]]:
        """Each local model's engine state, for peers' data-plane probes."""
        return {m.id: {"state": m.engine.state.kind,
                       "reason": getattr(m.engine.state, "reason", None)}
                for m in self.table.models.values()}

    def _describe(self) -> dict[str, Any]:
        """This node's models, state and machine as fields of its signed record."""
        models, baseline = [], {}
        for m in self._published_models():
            models.append({"id": m.id, "size_bytes": m.card.size_bytes, "sha256": self._sha(m.id),
                           "quantization": m.card.quantization, "slots": m.slots,
                           "queue_depth": m.queue_depth, "state": m.engine.state.kind,
                           "embeddings_only": m.card.embeddings_only})
            native = plausible(m.baseline.tokens_per_s if m.baseline else None,
                               MAX_TOKENS_PER_S, positive=True)
            if native is not None:
                baseline[m.id] = native
        return {"name": self.name, "models": models[:64], "baseline": baseline,
                "software_version": __version__,
                "fingerprints": dict(list(self.fingerprints.items())[:64]),
                "ledger_checkpoint": (self._ledger.latest_checkpoint
                                      if self._ledger and self._ledger.keeper else ""),
                "ledger_witnessed": (self._ledger.witness.published()
                                     if self._ledger and self._ledger.witness
                                     and not self._ledger.keeper else ""),
                "memory": self._memory.advert() if self._memory else None,
                "hardware": self._hardware.read(time.monotonic())}

    def _measure(self) -> dict[str, Any]:
        """This node's traffic figures for its record (mesh.state.MEASURED): summed up only
        when a record is signed, not every gossip round."""
        now = time.monotonic()
        metrics = {}
        for m in self._published_models():
            ttft, rate = m.meter.ttft_ms.summary(now), m.meter.tokens_per_s.summary(now)
            metrics[m.id] = {"ttft_ms_p50": plausible(ttft.p50, MAX_TTFT_MS),
                             "tokens_per_s_p50": plausible(rate.p50, MAX_TOKENS_PER_S),
                             "samples": min(rate.count, MAX_SAMPLES)}
        return {"metrics": metrics,
                "ledger": self._ledger.published_balances() if self._ledger else {}}

    def _published_models(self) -> list[ServedModel]:
        """The models this node's record offers (what it serves itself, not peers' models)."""
        return [m for m in self.table.models.values()
                if isinstance(m.engine, RemoteBackend | LocalEngine | BrokenEngine)]

    async def _fingerprint(self, session: aiohttp.ClientSession, model: ServedModel) -> None:
        """Taken with each native baseline; published with the next record."""
        taken = await fingerprint.take(session, model)
        if taken is not None:
            self.fingerprints[model.id] = taken
            log.info("model %s: fingerprint taken (sha256 %s…)", model.id, taken["sha256"][:12])

    def _standing(self, node_id: str) -> float | None:
        """A peer's credit balance, as the ledger's keeper publishes it."""
        return self._ledger.standing(node_id) if self._ledger is not None else None

    def _model_facts(self, model_id: str) -> tuple[str | None, float | None]:
        """A local model's file sha256 and size in billions of parameters (receipts)."""
        fp = self.fingerprints.get(model_id) or {}
        return fp.get("sha256"), parameters_from_size_label(fp.get("parameters"))

    def _sha(self, model_id: str) -> str | None:
        fp = self.fingerprints.get(model_id)
        return fp.get("sha256") if fp else self._file_sha.get(ModelId(model_id))

    def _write_runtime(self, port: int, mesh_addresses: list[str]) -> None:
        # "mesh": the first address, for readers older than "mesh_addresses".
        info = {"pid": os.getpid(), "url": self.url, "port": port, "mesh": mesh_addresses[0],
                "mesh_addresses": mesh_addresses, "node_id": self.identity.node_id}
        path = self.settings.data_dir / RUNTIME_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)


async def keep_running(run: Callable[[], Awaitable[None]], name: str,
                       delay_s: float = 5.0) -> None:
    """Run a component; if it fails with a bug, log it and start it again after `delay_s`.

    One component's bug must not take the node down: the task group would otherwise cancel
    every other component, and the API with them. Cancellation still stops it at once."""
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("component %s failed; restarting it in %.0fs", name, delay_s)
            await asyncio.sleep(delay_s)


def freeze_startup_heap() -> None:
    """Keep what starting up made (modules, apps, sessions: ~100k objects) out of every later
    garbage collection. A full collection walks every tracked object; in a node serving
    traffic one came about every 40 s and stalled the event loop, every stream with it, for
    60-90 ms here. The young generations' garbage is collected first (a few ms), so it is not
    kept for good; a full collection here would cost every node start ~0.1 s, and starting up
    already ran one."""
    gc.collect(1)
    gc.freeze()


def engine_connector() -> aiohttp.TCPConnector:
    """Connections to engines are not reused: llama.cpp's server closes a connection after a
    streamed answer, so a pooled one fails the next request with a reset. A loopback connect
    costs far less than that failure."""
    return aiohttp.TCPConnector(limit=0, force_close=True)


class _Stop(Exception):
    """Raised inside the task group to cancel every component on shutdown."""


def _card_for_unreadable(path: Path) -> ModelCard:
    size = path.stat().st_size if path.is_file() else None
    return ModelCard(id=catalog.model_id_for(path, None), path=path, size_bytes=size,
                     quantization=None, architecture=None, context_length=None)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
