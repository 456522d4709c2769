// The chat page: streams /v1/chat/completions (OpenAI SSE) through this node and shows, under
// each answer, who served it and the TTFT and tokens/s this browser measured. Stop aborts the
// fetch; the node frees the engine slot when the connection closes.
"use strict";

(() => {
  const { api, NeedsKey, loggedIn, esc, isNum, ms, rate } = Covey;
  const MODEL_KEY = "covey.model";
  const REFRESH_MS = 10000;
  const $ = (id) => document.getElementById(id);
  const history = []; // the conversation sent with each request: {role, content}
  let controller = null; // the AbortController of the answer streaming now

  // ---- models ----------------------------------------------------------------------------

  /** Models best-served first: daily-driver models before experimental ones before
   *  capacity ones, then most serving nodes, then the highest measured tokens/s. */
  function ranked(catalog) {
    const order = new Map([["daily-driver", 0], ["experimental", 1], ["capacity", 2]]);
    const tier = (m) => order.get(m.tier) ?? 1;
    const tps = (m) => (isNum(m.tokens_per_s_p50) ? m.tokens_per_s_p50 : -1);
    return [...catalog].sort((a, b) => tier(a) - tier(b) ||
      (b.nodes || []).length - (a.nodes || []).length || tps(b) - tps(a));
  }

  async function loadModels() {
    const status = await api("/api/status", { cache: "no-store" });
    const s = status.ok ? await status.json() : {};
    const options = ranked(s.catalog || []).map((m) => {
      const n = (m.nodes || []).length;
      const speed = rate(m.tokens_per_s_p50);
      const tier = typeof m.tier === "string" ? `${m.tier} · ` : "";
      return { id: m.id, label: `${m.id} — ${tier}${n} node${n === 1 ? "" : "s"}${speed ? ` · ${speed}` : ""}` };
    });
    $("node-label").textContent = s.node?.name ? `via ${s.node.name}` : "";
    const select = $("model");
    if (document.activeElement === select) return; // never rebuild a list the user has open
    // The user's pick (this session's, else the one remembered), else what the node gives a
    // request naming no model: its best-served daily-driver model.
    const current = select.value || localStorage.getItem(MODEL_KEY) || s.default_model;
    select.innerHTML = options.length
      ? options.map((o) => `<option value="${esc(o.id)}">${esc(o.label)}</option>`).join("")
      : `<option value="">no model in the mesh yet</option>`;
    if (current && options.some((o) => o.id === current)) select.value = current;
  }

  async function keepModelsFresh() {
    try {
      await loadModels();
    } catch (error) {
      if (error instanceof NeedsKey) { await loggedIn(); return keepModelsFresh(); }
      $("node-label").textContent = "node unreachable";
    }
    setTimeout(keepModelsFresh, REFRESH_MS);
  }

  // ---- messages --------------------------------------------------------------------------

  function addMessage(role, text) {
    $("hint")?.remove();
    const li = document.createElement("li");
    li.className = `message ${role}`;
    li.innerHTML = `<div class="bubble"></div>${role === "assistant" ? `<div class="meta muted">waiting for the first token…</div>` : ""}`;
    li.querySelector(".bubble").textContent = text;
    $("messages").append(li);
    scrollDown(true);
    return li;
  }

  function scrollDown(force) {
    const box = document.scrollingElement;
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
    if (force || nearBottom) box.scrollTop = box.scrollHeight;
  }

  function setStreaming(on) {
    $("send").disabled = on;
    $("stop").disabled = !on;
    $("model").disabled = on;
  }

  /** One streamed answer. Returns the text received (possibly partial). */
  async function stream(li, model, maxTokens) {
    const bubble = li.querySelector(".bubble");
    const meta = li.querySelector(".meta");
    controller = new AbortController();
    const started = performance.now();
    let first = null, last = null, chunks = 0, text = "", servedBy = "", ending = "";

    const showMeta = () => {
      const parts = [`served by <span class="served-by">${esc(servedBy || "unknown")}</span>`];
      if (first !== null) parts.push(`TTFT ${ms(first - started)}`);
      if (chunks >= 2 && last > first) parts.push(rate((chunks - 1) / ((last - first) / 1000)));
      if (chunks) parts.push(`${chunks} token${chunks === 1 ? "" : "s"}`);
      if (ending) parts.push(ending);
      meta.innerHTML = parts.map((p) => `<span>${p}</span>`).join(" · ");
    };

    try {
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ model: model || undefined, stream: true, max_tokens: maxTokens,
                               messages: history }),
        signal: controller.signal,
      });
      servedBy = response.headers.get("x-covey-served-by") || "";
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).error?.message || message; } catch { /* not JSON */ }
        throw new Error(message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const event = JSON.parse(data);
          if (event.error) throw new Error(event.error.message || "the engine failed");
          const piece = event.choices?.[0]?.delta?.content;
          if (piece) {
            const now = performance.now();
            if (first === null) first = now;
            last = now;
            chunks += 1;
            text += piece;
            bubble.textContent = text;
            scrollDown(false);
          }
          const reason = event.choices?.[0]?.finish_reason;
          if (reason === "length") ending = "stopped at max tokens";
        }
        showMeta();
      }
      if (!text) bubble.innerHTML = `<span class="muted">(empty answer)</span>`;
    } catch (error) {
      if (error.name === "AbortError") {
        ending = "stopped";
        if (!text) bubble.innerHTML = `<span class="muted">(stopped before the first token)</span>`;
      } else {
        li.classList.add("failed");
        ending = "";
        const note = document.createElement("div");
        note.className = "error-text";
        note.textContent = error instanceof NeedsKey ? "This node needs an API key." : error.message;
        bubble.after(note);
        if (error instanceof NeedsKey) throw error;
      }
    } finally {
      controller = null;
      li.classList.add("done");
      showMeta();
    }
    return text;
  }

  async function send(event) {
    event?.preventDefault();
    const prompt = $("prompt").value.trim();
    if (!prompt || controller) return;
    const model = $("model").value;
    const maxTokens = Math.max(1, parseInt($("max-tokens").value, 10) || 256);
    if (model) localStorage.setItem(MODEL_KEY, model);
    $("prompt").value = "";
    addMessage("user", prompt);
    history.push({ role: "user", content: prompt });
    const li = addMessage("assistant", "");
    setStreaming(true);
    try {
      const answer = await stream(li, model, maxTokens);
      if (answer) history.push({ role: "assistant", content: answer });
      else history.pop(); // nothing came back: the question is not part of the conversation
    } catch (error) {
      // Locked: give the prompt back so it can be sent again once the key is entered.
      history.pop();
      $("prompt").value = prompt;
      if (!(error instanceof NeedsKey)) throw error;
    } finally {
      setStreaming(false);
      $("prompt").focus();
    }
  }

  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("new-chat").addEventListener("click", () => {
    controller?.abort();
    history.length = 0;
    $("messages").innerHTML = "";
    $("prompt").focus();
  });

  Covey.wireForget();
  keepModelsFresh();
})();
