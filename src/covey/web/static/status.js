// The status page: polls /api/status every 2 s and redraws.
"use strict";

(() => {
  const { api, NeedsKey, loggedIn, esc, isNum, bytes, ms, rate, duration, ago, shortId, NONE } =
    Covey;
  const POLL_MS = 2000;
  const HOUR_S = 3600;
  const GONE_KEEP_S = 600; // a vanished peer stays listed as "gone" this long
  const seenPeers = new Map(); // id -> last peer object seen, to show peers that vanish
  let lastOk = 0;

  const $ = (id) => document.getElementById(id);
  const none = `<span class="none">${NONE}</span>`;
  const td = (label, html, cls = "") =>
    `<td data-label="${esc(label)}"${cls ? ` class="${cls}"` : ""}><div class="cell">${html}</div></td>`;
  const or = (text) => (text == null ? none : esc(text));

  function efficiencyPill(e) {
    if (!isNum(e)) return none;
    const level = e >= 0.8 ? "good" : e >= 0.5 ? "warn" : "bad";
    return `<span class="pill ${level}" title="through the mesh ÷ native">${Math.round(e * 100)} %</span>`;
  }

  // Efficiency with the count of answers long enough to compare with the baseline.
  function efficiencyCell(m) {
    const n = isNum(m.efficiency_samples) ? m.efficiency_samples : 0;
    const range = m.efficiency_tokens;
    const min = Array.isArray(range) ? ` of ${range[0]}–${range[1]} tokens` : "";
    const note = m.source === "peers" ? "" :
      `<small class="muted eff-samples">${esc(n)} comparable sample${n === 1 ? "" : "s"}${esc(min)}</small>`;
    if (m.baseline_suspect === true) {
      // Faster than native cannot be: the baseline was taken on a busy machine.
      return `<span class="pill warn" title="through the mesh ÷ native">native too low?</span>` +
        `<small class="muted eff-suspect">the native baseline reads below what the mesh measures; it is measured again when the engine is idle</small>${note}`;
    }
    return `${efficiencyPill(m.efficiency)}${note}`;
  }

  // Which kinds of measurement stand behind a tokens/s figure.
  function sourcesNote(src) {
    if (!src) return "";
    const parts = [["stream", "streamed"], ["engine", "engine timings"], ["clock", "node clock"]]
      .filter(([k]) => isNum(src[k]) && src[k] > 0).map(([k, label]) => `${src[k]} ${label}`);
    return parts.length ? `<small class="muted sources">${esc(parts.join(" · "))}</small>` : "";
  }

  function sparkline(history, now) {
    const points = (history || []).filter((p) => Array.isArray(p) && isNum(p[0]) && isNum(p[1]));
    if (!points.length) return none;
    const w = 120, h = 30, pad = 3;
    const top = Math.max(...points.map((p) => p[1])) * 1.15 || 1;
    const xy = points.map(([t, v]) => {
      const x = pad + (w - 2 * pad) * Math.min(1, Math.max(0, 1 - (now - t) / HOUR_S));
      const y = h - pad - (h - 2 * pad) * (v / top);
      return [x.toFixed(1), y.toFixed(1)];
    });
    const line = xy.map((p) => p.join(",")).join(" ");
    const [lx, ly] = xy[xy.length - 1];
    const area = `${xy[0][0]},${h - pad} ${line} ${lx},${h - pad}`;
    const last = points[points.length - 1][1];
    return `<svg class="spark" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img"
      aria-label="tokens per second over the last hour, latest ${last.toFixed(1)}">
      <line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" class="spark-axis"/>
      <polygon points="${area}" class="spark-area"/>
      <polyline points="${line}" class="spark-line"/>
      <circle cx="${lx}" cy="${ly}" r="2.5" class="spark-dot"/></svg>`;
  }

  function chips(items) {
    return items.length ? `<div class="chips">${items.join("")}</div>` : `<span class="muted">none</span>`;
  }

  // ---- sections --------------------------------------------------------------------------

  function renderNode(s) {
    const node = s.node || {};
    $("node-name").textContent = node.name || "unnamed node";
    $("node-id").textContent = node.id || "";
    document.title = `Covey · ${node.name || "status"}`;
    const mesh = s.mesh;
    const facts = [
      ["Mesh", mesh ? `<span class="mono">${esc(mesh.id)}</span>` : `<span class="muted">none</span>`],
      ["Mesh address", mesh ? `<span class="mono">${esc(mesh.address)}</span>` : "—"],
      ["Peers", String((s.peers || []).length)],
      ["Models in mesh", String((s.catalog || []).length)],
      ["Verify", verifyMode(s.verification)],
      ["Version", esc(node.version || "")],
      ["Up", esc(duration(node.uptime_s))],
    ];
    $("node-facts").innerHTML = facts.map(([k, v]) => `<div><dt>${k}</dt><dd>${v}</dd></div>`).join("");
    const banner = $("problem");
    banner.hidden = !(mesh && mesh.problem);
    banner.textContent = mesh && mesh.problem ? mesh.problem : "";
  }

  // A share as a percentage that never rounds to 100 % or 0 % unless it is exactly that.
  function percent(r) {
    if (!isNum(r)) return null;
    if (r >= 1) return "100 %";
    if (r <= 0) return "0 %";
    return `${Math.min(99.9, Math.max(0.1, Math.round(r * 1000) / 10)).toFixed(1)} %`;
  }

  const count = (n) => (isNum(n) ? n.toLocaleString("en") : "0");

  // One window of /api/status mesh_share: the share by requests (large), by tokens, and
  // the counts behind them, by who answered. No traffic is said in words, never as a %.
  function shareCard(id, w) {
    const body = $(id).querySelector(".share-body");
    body.classList.remove("muted");
    if (!w) {
      body.innerHTML = `<p class="share-none">not counted on this node</p>`;
      return;
    }
    const req = w.requests || {}, pt = w.prompt_tokens || {}, ct = w.completion_tokens || {};
    if (!isNum(req.total) || req.total <= 0) {
      body.innerHTML = `<p class="share-none">no traffic yet</p>`;
      return;
    }
    const byTokens = percent(w.share_by_tokens);
    const tokens = (k) => (pt[k] ?? 0) + (ct[k] ?? 0);
    const split = (get) => [["local", "this node"], ["peer", "peers"], ["provider", "provider"]]
      .map(([k, label]) => `${count(get(k))} ${label}`).join(" · ");
    body.innerHTML = `
      <div class="share-figures">
        <div><div class="share-value">${esc(percent(w.share_by_requests) ?? NONE)}</div><small class="muted">by requests</small></div>
        <div><div class="share-tokens">${byTokens ? esc(byTokens) : none}</div><small class="muted">by tokens</small></div>
      </div>
      <dl class="share-counts">
        <div><dt>Requests</dt><dd class="share-requests">${esc(count(req.total))}: ${esc(split((k) => req[k]))}</dd></div>
        <div><dt>Tokens</dt><dd class="share-token-counts">${esc(count(tokens("total")))}: ${esc(split(tokens))}</dd></div>
      </dl>`;
  }

  function renderShare(s) {
    const share = s.mesh_share;
    shareCard("share-24h", share ? share["24h"] : null);
    shareCard("share-7d", share ? share["7d"] : null);
  }

  // ---- tiers ------------------------------------------------------------------------------

  const CAPACITY = "capacity";
  const TIER_ORDER = new Map([["daily-driver", 0], ["experimental", 1]]); // a Map: a hostile tier name cannot reach Object's prototype
  let showCapacity = false; // the capacity group's toggle, kept across redraws

  // A tier's targets in words: "≤ 3 s TTFT · ≥ 8 tok/s"; none for experimental.
  function targetsText(t) {
    if (!t) return "";
    return [isNum(t.ttft_s) && `≤ ${t.ttft_s} s TTFT`, isNum(t.tokens_per_s) && `≥ ${t.tokens_per_s} tok/s`]
      .filter(Boolean).join(" · ");
  }

  // What a capacity model is expected to do: its measured (or gossiped) speed.
  const expected = (m) => rate(m.tokens_per_s_p50) || NONE;

  function tierCell(m, isDefault) {
    const tier = typeof m.tier === "string" ? m.tier : "experimental";
    const targets = targetsText(m.targets);
    const speed = tier === CAPACITY ? `<small class="expected">expected ${esc(expected(m))}</small>` : "";
    return `<span class="tier tier-${esc(tier)}">${esc(tier)}</span>${isDefault ? `<small class="default-mark">default</small>` : ""}${targets ? `<small class="muted targets">${esc(targets)}</small>` : ""}${speed}`;
  }

  function capacityToggle(models, cols) {
    const n = models.length;
    const speeds = models.map((m) => `${m.id} ${expected(m)}`).join(" · ");
    return `<tr class="capacity-toggle"><td colspan="${cols}"><div class="cell">
      <button type="button" class="ghost small" id="capacity-toggle" aria-expanded="${showCapacity}">${showCapacity ? "hide" : "show"} ${n} capacity model${n === 1 ? "" : "s"}</button>
      <small class="muted capacity-speeds">big models, slower targets: ${esc(speeds)}</small></div></td></tr>`;
  }

  function renderCatalog(s, now) {
    const catalog = (s.catalog || []).filter((m) => m && typeof m === "object");
    const rank = (m) => TIER_ORDER.get(m.tier) ?? 1;
    const main = catalog.filter((m) => m.tier !== CAPACITY).sort((a, b) => rank(a) - rank(b));
    const capacity = catalog.filter((m) => m.tier === CAPACITY);
    const row = (m) => {
      const size = [bytes(m.size_bytes), m.quantization].filter(Boolean).join(" · ");
      const nodes = chips((m.nodes || []).map((n) =>
        `<span class="chip" title="${esc(n.id)}">${esc(n.name || shortId(n.id))}</span>`));
      const r = rate(m.tokens_per_s_p50);
      const perSamples = r ? `<small class="muted">${esc(m.samples ?? 0)} samples · ${esc(duration(m.window_s))}</small>${sourcesNote(m.tokens_per_s_sources)}` : "";
      const ttft = m.ttft_ms_p50 == null && r
        ? `<span class="none" title="only streamed answers have a first token to time">${NONE}</span><small class="muted">streamed only</small>`
        : or(ms(m.ttft_ms_p50));
      const hidden = m.tier === CAPACITY && !showCapacity;
      return `<tr data-model="${esc(m.id)}" data-tier="${esc(m.tier || "")}"${hidden ? " hidden" : ""}>
        ${td("Model", `<div class="strong mono">${esc(m.id)}</div><small class="muted">${esc(size)}</small>`)}
        ${td("Tier", tierCell(m, m.id === s.default_model), "tier-cell")}
        ${td("Served by", nodes)}
        ${td("TTFT p50 (streamed)", ttft, "num ttft")}
        ${td("Tokens/s p50", `<div class="rate">${or(r)}</div>${perSamples}`, "num tps")}
        ${td("Native", or(rate(m.baseline_tokens_per_s)), "num native")}
        ${td("Efficiency", efficiencyCell(m), "num efficiency")}
        ${td("Last hour", sparkline(m.history, now), "spark-cell")}
      </tr>`;
    };
    const cols = $("catalog").tHead.rows[0].cells.length;
    const body = [...main.map(row), ...(capacity.length ? [capacityToggle(capacity, cols)] : []),
                  ...capacity.map(row)];
    fill("catalog", body, "The mesh serves no models yet: start a node with --model, or join one that does.");
  }

  // One listener for the redrawn table (no inline handlers under the CSP).
  $("catalog").addEventListener("click", (event) => {
    if (!event.target.closest("#capacity-toggle")) return;
    showCapacity = !showCapacity;
    const toggle = $("capacity-toggle");
    const n = $("catalog").querySelectorAll(`tr[data-tier="${CAPACITY}"]`).length;
    toggle.textContent = `${showCapacity ? "hide" : "show"} ${n} capacity model${n === 1 ? "" : "s"}`;
    toggle.setAttribute("aria-expanded", String(showCapacity));
    $("catalog").querySelectorAll(`tr[data-tier="${CAPACITY}"]`).forEach((tr) => { tr.hidden = !showCapacity; });
  });

  function health(p) {
    if (p.gone) {
      return `<span class="bad-text">✗ gone</span><small class="muted">not heard from for ${esc(duration(p.goneFor))}</small>`;
    }
    const h = p.health;
    if (!h) return `<span class="muted">not checked</span>`;
    if (h.ok === true) {
      return `<span class="good-text" title="checked ${esc(ago(p.now - h.checked_at))}">✓ healthy</span>`;
    }
    if (h.ok === false) {
      const f = h.first_failure || {};
      return `<span class="bad-text" title="${esc(f.detail || "")}">✗ ${isNum(f.layer) ? `layer ${f.layer} · ` : ""}${esc(f.name || "failing")}</span>
        ${f.detail ? `<small class="detail">${esc(f.detail)}</small>` : ""}
        ${f.fix ? `<small class="fix">${esc(f.fix)}</small>` : ""}`;
    }
    return `<span class="muted">checking…</span>`;
  }

  // ---- verification (issue 14): this node's own audit verdicts, never a peer's word -------

  const VERDICTS = new Set(["verified", "unverified", "inconclusive", "suspect"]);
  const MODES = new Map([
    ["off", "this node audits no peer"],
    ["observe", "audits peers at random times and shows the verdicts; routing is unchanged"],
    ["enforce", "audits peers and takes a suspect peer out of routing for a while"],
  ]);
  const MAX_EVIDENCE = 300;

  function verifyMode(v) {
    const mode = v && MODES.has(v.mode) ? v.mode : "off";
    const k = v && isNum(v.fails_to_suspect) ? v.fails_to_suspect : null;
    const title = MODES.get(mode) + (mode !== "off" && k ? `; suspect after ${k} failed audits in a row` : "");
    return `<span class="verify-mode verify-${mode}" title="${esc(title)}">${mode}</span>`;
  }

  // A node wall time as this browser's clock reads it: "14:05", or "Dec 2 14:05" a day away.
  function wallTime(t, now) {
    const d = new Date(t * 1000);
    const hm = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
    return t - now < 86400 ? hm : `${d.toLocaleString("en", { month: "short", day: "numeric" })} ${hm}`;
  }

  // Audited (peer, model) pairs: "node id NUL model" -> entry.
  function verdictIndex(v) {
    const index = new Map();
    ((v && Array.isArray(v.peers)) ? v.peers : []).forEach((e) => {
      if (e && typeof e.node_id === "string" && typeof e.model === "string") {
        index.set(`${e.node_id}\u0000${e.model}`, e);
      }
    });
    return index;
  }

  function verdictLine(model, e, now) {
    const status = e && VERDICTS.has(e.status) ? e.status : "unverified";
    const n = (k) => (e && isNum(e[k]) ? e[k] : 0);
    const audits = n("audits");
    const counts = audits
      ? `${audits} audit${audits === 1 ? "" : "s"}: ${n("passes")} passed · ${n("fails")} failed · ${n("inconclusive")} inconclusive`
      : "no audit yet: this node audits the models it serves itself";
    const evidence = e && typeof e.evidence === "string" ? e.evidence.slice(0, MAX_EVIDENCE) : "";
    const last = e && isNum(e.last_audit_at) ? `last audit ${ago(now - e.last_audit_at)}` : "";
    const title = [counts, last, evidence].filter(Boolean).join(" · ");
    const until = e && isNum(e.demoted_until) && e.demoted_until > now
      ? `<small class="demoted" title="no routes from this node until then; the period doubles on repeat">demoted until ${esc(wallTime(e.demoted_until, now))}</small>` : "";
    return `<div class="verdict-line" data-model="${esc(model)}">
      <span class="mono small-text">${esc(model)}</span>
      <span class="verdict verdict-${status}" title="${esc(title)}">${status}</span>${until}
      ${audits ? `<small class="muted verdict-counts">${esc(`${n("passes")}/${audits} passed`)}${last ? ` · ${esc(last)}` : ""}</small>` : ""}
      ${evidence && status !== "verified" ? `<small class="detail verdict-evidence">${esc(evidence)}</small>` : ""}
    </div>`;
  }

  // One line per model the peer claims, then any other this node audited it for.
  function verdictCell(p, s, index, now) {
    const mode = s.verification && MODES.has(s.verification.mode) ? s.verification.mode : "off";
    if (mode === "off") return `<span class="muted">not audited (verify off)</span>`;
    const claimed = (p.models || []).map((m) => m && m.id).filter((id) => typeof id === "string");
    const audited = [...index.values()].filter((e) => e.node_id === p.id).map((e) => e.model);
    const models = [...new Set([...claimed, ...audited])];
    return models.length
      ? models.map((m) => verdictLine(m, index.get(`${p.id}\u0000${m}`), now)).join("")
      : `<span class="muted">no models</span>`;
  }

  // ---- credits (issue 15): given / used / balance per member -------------------------------
  // The keeper's published balance is the mesh's figure; given and used come from this node's
  // own ledger (its receipts with that member), which is all of them on the keeper.
  function creditCell(p, ledger) {
    if (!ledger) return `<span class="muted">no ledger</span>`;
    const mine = (ledger.local || {})[p.id];
    const published = (ledger.published || {})[p.id];
    const balance = isNum(published) ? published : mine && isNum(mine.balance) ? mine.balance : null;
    if (balance == null && !mine) return `<span class="muted">—</span>`;
    const fmt = (v) => (isNum(v) ? v.toFixed(3) : "—");
    const title = isNum(published) ? "balance published by the ledger's keeper" : "balance in this node's own ledger";
    return `<div class="credit-balance ${balance < 0 ? "warn-text" : ""}" title="${esc(title)}">${esc(fmt(balance))}</div>`
      + (mine ? `<small class="muted credit-flow">gave ${esc(fmt(mine.given))} · used ${esc(fmt(mine.used))}</small>` : "");
  }

  function renderPeers(s, now) {
    const current = new Map((s.peers || []).map((p) => [p.id, p]));
    current.forEach((p, id) => seenPeers.set(id, { ...p, seenAt: now }));
    const peers = [];
    seenPeers.forEach((p, id) => {
      if (current.has(id)) peers.push({ ...current.get(id), now });
      else if (now - p.seenAt > GONE_KEEP_S) seenPeers.delete(id);
      else peers.push({ ...p, now, gone: true, goneFor: now - (p.last_seen ?? p.seenAt) });
    });
    const verdicts = verdictIndex(s.verification);
    const body = peers.map((p) => {
      const hw = p.hardware || {};
      const memory = [hw.ram_bytes != null && `RAM ${bytes(hw.ram_bytes)}`,
                      hw.gpu_bytes != null && `GPU ${bytes(hw.gpu_bytes)}`].filter(Boolean);
      const models = chips((p.models || []).map((m) => {
        const r = rate(m.tokens_per_s_p50);
        return `<span class="chip state-${esc(m.state)}" title="${esc(m.state || "")}">${esc(m.id)}${r ? ` · ${esc(r)}` : ""}</span>`;
      }));
      const queue = (p.models || []).reduce((sum, m) => sum + (isNum(m.queue_depth) ? m.queue_depth : 0), 0);
      const age = isNum(p.last_seen) ? now - p.last_seen : null;
      const stale = p.gone || (isNum(p.expires_at) && now > p.expires_at);
      const unhealthy = p.gone || p.health?.ok === false;
      return `<tr data-peer="${esc(p.id)}" class="${p.gone ? "gone" : ""}${unhealthy ? " unhealthy" : ""}">
        ${td("Node", `<div class="strong">${esc(p.name || "unnamed")}</div><small class="muted mono" title="${esc(p.id)}">${esc(shortId(p.id))}</small>`)}
        ${td("Addresses", (p.addresses || []).map((a) => `<div class="mono small-text">${esc(a)}</div>`).join("") || "—")}
        ${td("Memory", memory.length ? memory.map((m) => `<div>${esc(m)}</div>`).join("") : `<span class="muted">unknown</span>`)}
        ${td("Models", models)}
        ${td("Queue", String(queue), "num")}
        ${td("Last seen", `<span class="${stale ? "warn-text" : ""}">${age == null ? "—" : esc(ago(age))}</span>`, "last-seen")}
        ${td("Health", health(p), "health")}
        ${td("Verified", verdictCell(p, s, verdicts, now), "verified")}
        ${td("Credits", creditCell(p, s.ledger), "num credits")}
      </tr>`;
    });
    fill("peers", body, "No other members yet. Run <code>covey invite</code> on the mesh's first node and join with <code>covey serve --join</code>.");
  }

  function renderLocal(s) {
    const body = (s.models || []).map((m) => {
      const pair = (p, f) => (p && isNum(p.p50) ? `${f(p.p50)} / ${f(p.p95)}` : null);
      return `<tr data-local="${esc(m.id)}">
        ${td("Model", `<div class="strong mono">${esc(m.id)}</div><small class="muted">${esc([m.engine, m.tier].filter(Boolean).join(" · "))}</small>`)}
        ${td("State", `<span class="state state-${esc(m.state)}">${esc(m.state)}</span>${m.reason ? `<small class="detail">${esc(m.reason)}</small>` : ""}`)}
        ${td("In flight", esc(`${m.in_flight ?? 0} / ${m.slots ?? "?"}`), "num in-flight")}
        ${td("Queue", esc(m.queue_depth ?? 0), "num")}
        ${td("TTFT p50 / p95", or(pair(m.ttft_ms, ms)), "num")}
        ${td("Tokens/s p50 / p95", or(pair(m.tokens_per_s, (v) => v.toFixed(1))), "num")}
        ${td("Native", or(rate(m.baseline?.tokens_per_s)), "num")}
      </tr>`;
    });
    fill("local", body, "This node serves no models itself; it answers through its peers.");
  }

  function fill(tableId, rows, emptyHtml) {
    const tbody = $(tableId).tBodies[0];
    const cols = $(tableId).tHead.rows[0].cells.length;
    tbody.innerHTML = rows.length ? rows.join("")
      : `<tr class="empty"><td colspan="${cols}">${emptyHtml}</td></tr>`;
  }

  // ---- polling ---------------------------------------------------------------------------

  function setLive(text, cls) {
    const live = $("live");
    live.textContent = text;
    live.className = `live ${cls}`;
  }

  async function poll() {
    try {
      const response = await api("/api/status", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const s = await response.json();
      // The node's clock, not the browser's: "last seen" and the sparkline use node times.
      const now = (s.node?.started_at ?? 0) + (s.node?.uptime_s ?? 0) || Date.now() / 1000;
      renderNode(s);
      renderShare(s);
      renderCatalog(s, now);
      renderPeers(s, now);
      renderLocal(s);
      lastOk = Date.now();
      setLive("live", "ok");
    } catch (error) {
      if (error instanceof NeedsKey) {
        setLive("locked", "warn");
        await loggedIn();
        return poll();
      }
      const since = lastOk ? ` · last update ${duration((Date.now() - lastOk) / 1000)} ago` : "";
      setLive(`node unreachable${since}`, "bad");
    }
    setTimeout(poll, POLL_MS);
  }

  Covey.wireForget();
  poll();
})();
