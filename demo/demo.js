// The demo page: streams one answer from the app's /demo/api/stream (server-sent events over a POST), or
// generates it in this browser from the prompt the app builds (/demo/api/prompt + engine.js), times it here
// and charts the last requests of each engine. No libraries, no build step.
"use strict";

(() => {
  const HISTORY = 10;
  const ROLES = ["small", "large", "browser"];
  const SERVER_ROLES = ["small", "large"];
  const ROLE_LABELS = { small: "small", large: "large", browser: "in this browser" };
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("demo-form"),
    prompt: $("prompt"),
    reference: $("reference"),
    temperature: $("temperature"),
    temperatureValue: $("temperature-value"),
    maxTokens: $("max-tokens"),
    send: $("send"),
    stop: $("stop"),
    status: $("status"),
    meta: $("answer-meta"),
    notices: $("notices"),
    output: $("output"),
    thinking: $("thinking"),
    thinkingSummary: $("thinking-summary"),
    thinkingText: $("thinking-text"),
    endpointHost: $("endpoint-host"),
    inferenceHost: $("inference-host"),
    webgpuFact: $("webgpu-fact"),
    webgpuStatus: $("webgpu-status"),
    inferenceNote: $("inference-note"),
    engineFact: $("engine-fact"),
    engineStatus: $("engine-status"),
    enginePanel: $("engine-panel"),
    engineNote: $("engine-note"),
    engineProgress: $("engine-progress"),
    roleBrowser: $("role-browser"),
    runsBody: document.querySelector("#runs-table tbody"),
    metric: {
      ttft: $("m-ttft"),
      load: $("m-load"),
      total: $("m-total"),
      tokens: $("m-tokens"),
      rate: $("m-rate"),
      serverTtft: $("m-server-ttft"),
      prompt: $("m-prompt"),
    },
  };

  const modelNames = { small: null, large: null, browser: null };
  const runs = []; // finished requests, oldest first: {n, role, model, question, ttft, total, tokens, rate, result}
  const questions = new Map(); // prompt + reference text -> Q1, Q2…: the same question on different engines
  let runCounter = 0;
  let controller = null;
  // The in-browser engine: info from the server, then one load (a promise) shared by every request.
  const browserEngine = { info: null, loading: null, engine: null };

  // ------------------------------------------------------------------------------ formatting
  function fmtMs(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function fmtTick(ms, scaleMax) {
    if (ms === 0) return "0";
    if (scaleMax < 1000) return `${Math.round(ms)} ms`;
    return `${Number((ms / 1000).toFixed(2))} s`;
  }

  function fmtRate(rate) {
    return rate === null || rate === undefined ? "–" : rate.toFixed(1);
  }

  function fmtBytes(bytes) {
    return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(bytes >= 1e8 ? 0 : 1)} MB` : `${Math.round(bytes / 1e3)} kB`;
  }

  function median(values) {
    const sorted = values.filter((v) => v !== null && v !== undefined).sort((a, b) => a - b);
    if (!sorted.length) return null;
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  // ------------------------------------------------------------------------------ page state
  function setStatus(state, text) {
    els.status.dataset.state = state;
    els.status.textContent = text;
  }

  function addNotice(level, message) {
    const p = document.createElement("p");
    p.className = "notice";
    p.dataset.level = level;
    p.textContent = message;
    els.notices.appendChild(p);
    return p;
  }

  function setBusy(busy) {
    els.send.disabled = busy;
    els.stop.disabled = !busy;
    els.output.classList.toggle("streaming", busy);
  }

  function resetAnswer() {
    els.notices.replaceChildren();
    els.output.textContent = "";
    els.thinking.hidden = true;
    els.thinking.open = true;
    els.thinkingSummary.textContent = "Thinking…";
    els.thinkingText.textContent = "";
    for (const dd of Object.values(els.metric)) dd.textContent = "–";
  }

  function selectedRole() {
    const checked = els.form.querySelector('input[name="role"]:checked');
    return checked ? checked.value : "small";
  }

  function questionLabel(prompt, reference) {
    const key = `${prompt.trim()}\u0000${reference.trim()}`;
    if (!questions.has(key)) questions.set(key, `Q${questions.size + 1}`);
    return questions.get(key);
  }

  // ------------------------------------------------------------------------------ server info
  async function loadInfo() {
    let info;
    try {
      const response = await fetch("/demo/api/info", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      info = await response.json();
    } catch (err) {
      els.endpointHost.textContent = "unknown";
      addNotice("error", `Cannot reach this app's server (${err.message}). Is it still running?`);
      return;
    }
    els.endpointHost.textContent = info.endpoint_host + (info.embedded ? " (bundled llama.cpp model)" : "");
    els.inferenceHost.textContent = ` at ${info.endpoint_host}`;
    let reported = false;
    for (const role of SERVER_ROLES) {
      const entry = info.roles[role];
      modelNames[role] = entry.model;
      const label = entry.model || `${entry.alias} (unavailable)`;
      $(`model-${role}`).textContent = label;
      $(`chart-name-${role}`).textContent = label;
      if (entry.error && !reported) {
        addNotice("error", entry.error);
        reported = true;
      }
    }
    if (info.defaults) {
      els.temperature.value = info.defaults.temperature;
      els.temperatureValue.textContent = Number(info.defaults.temperature).toFixed(2);
      els.maxTokens.value = info.defaults.max_tokens;
    }
    if (info.max_tokens_limit) els.maxTokens.max = info.max_tokens_limit;
    showEngineInfo(info.browser_engine);
  }

  async function detectWebGPU() {
    const fact = els.webgpuFact;
    if (!("gpu" in navigator) || !navigator.gpu) {
      fact.dataset.webgpu = "no";
      els.webgpuStatus.textContent = "not exposed by this browser";
      return;
    }
    let adapter = null;
    try {
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), 2000));
      adapter = await Promise.race([navigator.gpu.requestAdapter(), timeout]);
    } catch (err) {
      adapter = null;
    }
    fact.dataset.webgpu = adapter ? "yes" : "no-adapter";
    els.webgpuStatus.textContent = adapter
      ? "available in this browser (the in-browser engine uses it)"
      : "exposed, but no GPU adapter (the in-browser engine uses the CPU)";
  }

  // ------------------------------------------------------------------------------ in-browser engine
  function setEngineState(state, headline, note) {
    els.enginePanel.dataset.state = state;
    els.engineFact.dataset.engine = state;
    els.engineStatus.textContent = headline;
    if (note !== undefined) els.engineNote.textContent = note;
  }

  function showEngineInfo(engineInfo) {
    browserEngine.info = engineInfo || null;
    if (!engineInfo || !engineInfo.available) {
      const why = engineInfo && engineInfo.problems.length
        ? engineInfo.problems.join(" ")
        : "In-browser mode is unavailable: this app's server did not offer it.";
      els.roleBrowser.disabled = true;
      $("model-browser").textContent = "unavailable";
      $("chart-name-browser").textContent = "unavailable";
      els.enginePanel.hidden = false;
      setEngineState("unavailable", "unavailable", why);
      return;
    }
    const label = `${engineInfo.model.name} · ${fmtBytes(engineInfo.model.bytes)}`;
    modelNames.browser = engineInfo.model.name;
    $("model-browser").textContent = label;
    $("chart-name-browser").textContent = engineInfo.model.name;
    setEngineState("idle", "not loaded yet",
      `Choose "In this browser" to load ${engineInfo.model.name} (${fmtBytes(engineInfo.model.bytes)}) into this page.`);
    if (selectedRole() === "browser") ensureEngine().catch(() => {});
  }

  function showLoadProgress({ phase, loaded, total, cached }) {
    els.enginePanel.hidden = false;
    if (phase === "download") {
      els.engineProgress.max = 1;
      els.engineProgress.value = total ? loaded / total : 0;
      const pct = total ? Math.floor((100 * loaded) / total) : 0;
      setEngineState("loading", `loading ${pct} %`,
        `Downloading the model from this app: ${fmtBytes(loaded)} of ${fmtBytes(total)}. It stays in this browser's cache for the next visit.`);
    } else {
      els.engineProgress.removeAttribute("value"); // indeterminate while the runtime reads the model
      setEngineState("loading", "starting",
        (cached ? "Read the model from this browser's cache. " : "Downloaded. ") + "Starting the runtime…");
    }
  }

  // Load the runtime and the model once; every request waits on the same promise. A failed load may be retried.
  function ensureEngine() {
    const info = browserEngine.info;
    if (!info || !info.available) {
      return Promise.reject(new Error(els.engineNote.textContent || "In-browser mode is unavailable."));
    }
    if (browserEngine.loading) return browserEngine.loading;
    els.enginePanel.hidden = false;
    els.engineProgress.max = 1;
    els.engineProgress.value = 0;
    setEngineState("loading", "loading", `Loading the runtime (${info.runtime.package} ${info.runtime.version})…`);
    browserEngine.loading = import("/demo/static/engine.js")
      .then((module) => module.loadEngine(info, showLoadProgress))
      .then((engine) => {
        browserEngine.engine = engine;
        Object.assign(els.enginePanel.dataset, { loadMs: engine.load.loadMs, cached: engine.load.cached, threads: engine.backend.threads });
        const where = engine.load.cached ? "from this browser's cache" : `first visit: downloaded ${fmtBytes(info.model.bytes)}`;
        setEngineState("ready", engine.backend.webgpu ? "ready · WebGPU" : `ready · WebAssembly, ${engine.backend.threads} thread${engine.backend.threads > 1 ? "s" : ""}`,
          `Ready: ${engine.load.modelName} runs here on ${engine.description}. Loaded in ${fmtMs(engine.load.loadMs)} (${where}).`);
        els.metric.load.textContent = fmtMs(engine.load.loadMs);
        return engine;
      })
      .catch((err) => {
        browserEngine.loading = null;
        setEngineState("error", "failed to load", `The model could not be loaded in this browser: ${err.message || err}`);
        throw err;
      });
    return browserEngine.loading;
  }

  function showRoleNote() {
    const role = selectedRole();
    els.inferenceNote.dataset.engine = role === "browser" ? "browser" : "server";
    if (role === "browser") {
      els.enginePanel.hidden = false;
      ensureEngine().catch(() => {});
    } else if (els.enginePanel.dataset.state !== "unavailable") {
      els.enginePanel.hidden = els.enginePanel.dataset.state === "idle";
    }
  }

  // ------------------------------------------------------------------------------ streaming
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  async function errorMessage(response) {
    try {
      const data = await response.json();
      if (data && data.error) return data.error;
    } catch (err) {
      // not JSON: fall through
    }
    return `The app answered HTTP ${response.status}.`;
  }

  function handleEvent(run, name, data) {
    const now = performance.now();
    switch (name) {
      case "sources": {
        run.sources = data.count;
        break;
      }
      case "prompt": {
        els.metric.prompt.textContent = String(data.prompt_tokens);
        const used = data.sources_used.length;
        const where = [...new Set(data.sources_used.map((s) => s.location))].slice(0, 3).join(", ");
        run.sourcesNote = used ? `${used} source${used > 1 ? "s" : ""} (${where})` : "no sources matched";
        els.meta.textContent = `Prompt built: ${run.sourcesNote}, ${data.prompt_tokens} tokens. Waiting for the model…`;
        break;
      }
      case "started": {
        run.model = data.model;
        run.answeringNote = data.role === "browser"
          ? `${data.model} is answering in this browser (${data.backend}) from ${run.sourcesNote || "the prompt"}.`
          : `${data.model} (${data.role} model) is answering from ${run.sourcesNote || "the prompt"}.`;
        els.meta.textContent = run.answeringNote;
        setStatus("waiting", "Waiting for the first token");
        break;
      }
      case "token": {
        if (run.ttft === null) {
          run.ttft = now - run.t0;
          els.metric.ttft.textContent = fmtMs(run.ttft);
          els.meta.textContent = run.answeringNote || els.meta.textContent;
          setStatus("streaming", "Streaming");
        }
        run.tokens += 1;
        els.output.append(data.text);
        els.metric.tokens.textContent = String(run.tokens);
        const out = els.output;
        if (out.scrollHeight - out.scrollTop - out.clientHeight < 60) out.scrollTop = out.scrollHeight;
        break;
      }
      case "thinking": {
        els.thinking.hidden = false;
        els.thinkingText.append(data.text);
        break;
      }
      case "thought": {
        const seconds = data.seconds < 1 ? "<1" : Math.round(data.seconds);
        els.thinkingSummary.textContent = `Thought for ${seconds} s` + (data.answered ? "" : " (no answer: token budget spent)");
        els.thinking.open = false;
        break;
      }
      case "notice": {
        addNotice(data.level, data.message);
        if (data.level === "error") run.failed = true;
        break;
      }
      case "done": {
        run.total = now - run.t0;
        run.finished = true;
        els.metric.total.textContent = fmtMs(run.total);
        const server = data.server;
        if (server) {
          if (server.completion_tokens !== null) {
            run.tokens = server.completion_tokens;
            els.metric.tokens.textContent = (server.tokens_estimated ? "~" : "") + server.completion_tokens;
          }
          run.rate = server.tokens_per_s;
          els.metric.rate.textContent = fmtRate(server.tokens_per_s);
          els.metric.serverTtft.textContent = fmtMs(server.ttft_ms);
        }
        if (data.error || run.failed) run.result = "error";
        else if (data.cancelled) run.result = "stopped";
        else run.result = "done";
        if (data.answered_by) run.model = data.answered_by;
        break;
      }
      default:
        break;
    }
  }

  async function send() {
    if (controller) return;
    resetAnswer();
    const role = selectedRole();
    const run = {
      n: ++runCounter,
      role,
      model: modelNames[role],
      question: questionLabel(els.prompt.value, els.reference.value),
      prompt: els.prompt.value.trim(),
      t0: performance.now(),
      ttft: null,
      total: null,
      tokens: 0,
      rate: null,
      result: "running",
      failed: false,
      finished: false,
    };
    const payload = {
      prompt: els.prompt.value,
      role,
      reference_text: els.reference.value,
      temperature: Number(els.temperature.value),
      max_tokens: Number(els.maxTokens.value),
    };
    controller = new AbortController();
    const signal = controller.signal;
    setBusy(true);
    setStatus("waiting", "Waiting");
    els.meta.textContent = role === "browser" ? "Asking this app for the sources and the prompt…" : `Sending to the ${role} model…`;
    try {
      if (role === "browser") await answerInBrowser(run, payload, signal);
      else await answerOnServer(run, payload, signal);
    } catch (err) {
      if (err.name === "AbortError") {
        run.result = "stopped";
        run.total = performance.now() - run.t0;
        els.metric.total.textContent = fmtMs(run.total);
        const tokens = `${run.tokens} token${run.tokens === 1 ? "" : "s"}`;
        if (role === "browser") {
          if (run.generating) {
            const notice = addNotice("warning", `Stopped after ${tokens} and ${fmtMs(run.total)}. The in-browser engine is stopping…`);
            whenEngineIdle(notice, tokens, run.total);
          } else {
            addNotice("warning", "Stopped before the in-browser engine started on this answer.");
          }
        } else {
          addNotice("warning", `Stopped after ${tokens} and ${fmtMs(run.total)}. The app cancelled the request to the model server.`);
        }
      } else if (err.name === "RequestRejected") {
        run.result = "rejected";
        addNotice("error", err.message);
        els.meta.textContent = "The app did not start this request.";
      } else {
        run.result = "error";
        addNotice("error", role === "browser"
          ? `The in-browser engine failed: ${err.message || err}`
          : `The connection to this app failed: ${err.message}`);
      }
    } finally {
      controller = null;
      setBusy(false);
      finishRun(run);
    }
  }

  function rejected(message) {
    const err = new Error(message);
    err.name = "RequestRejected";
    return err;
  }

  function abortable(signal) {
    return new Promise((resolve, reject) => {
      const stop = () => reject(new DOMException("Stopped", "AbortError"));
      if (signal.aborted) stop();
      else signal.addEventListener("abort", stop, { once: true });
    });
  }

  async function answerOnServer(run, payload, signal) {
    const response = await fetch("/demo/api/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(payload),
      signal,
    });
    if (!response.ok) throw rejected(await errorMessage(response));
    await readEvents(response.body, (name, data) => handleEvent(run, name, data));
    if (!run.finished) {
      run.result = "error";
      addNotice("error", "The stream ended before the answer was finished (the app's server closed it).");
    }
  }

  // The server retrieves and builds the prompt; the model here applies its chat template and generates.
  async function answerInBrowser(run, payload, signal) {
    const stopped = abortable(signal);
    stopped.catch(() => {});
    if (!browserEngine.engine) {
      setStatus("waiting", "Loading the model");
      els.meta.textContent = "Loading the model in this browser first (not counted in the times)…";
    }
    const engine = await Promise.race([ensureEngine(), stopped]);
    if (engine.busy) {
      setStatus("waiting", "Waiting for the engine");
      els.meta.textContent = "The in-browser engine is still stopping the previous answer…";
      await Promise.race([engine.busy, stopped]);
    }
    run.t0 = performance.now(); // like a server request: from here to the first token and to the end
    run.loadMs = engine.load.loadMs;
    els.metric.load.textContent = fmtMs(engine.load.loadMs) + (engine.load.cached ? " (cached)" : "");
    const response = await fetch("/demo/api/prompt", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(payload),
      signal,
    });
    if (!response.ok) throw rejected(await errorMessage(response));
    const prepared = await response.json();
    handleEvent(run, "sources", prepared.sources);
    handleEvent(run, "prompt", prepared.prompt);
    for (const notice of prepared.notices) handleEvent(run, "notice", notice);
    handleEvent(run, "started", { role: "browser", model: engine.load.modelName, backend: engine.description });
    run.generating = true;
    const generation = engine.generate(prepared.messages, {
      temperature: payload.temperature,
      maxTokens: payload.max_tokens,
      signal,
      onToken: (text) => handleEvent(run, "token", { text, role: "browser" }),
      onPromptProgress: (progress) => {
        if (run.ttft === null && progress.total) {
          els.meta.textContent = `${engine.load.modelName} is reading the prompt in this browser: ${progress.processed} of ${progress.total} tokens.`;
        }
      },
    });
    const result = await Promise.race([generation, stopped]);
    run.total = performance.now() - run.t0;
    run.finished = true;
    run.tokens = result.completionTokens;
    run.rate = result.tokensPerS;
    run.result = "done";
    els.metric.total.textContent = fmtMs(run.total);
    els.metric.tokens.textContent = (result.estimated ? "~" : "") + result.completionTokens;
    els.metric.rate.textContent = fmtRate(result.tokensPerS);
    if (result.promptTokens) els.metric.prompt.textContent = String(result.promptTokens);
    if (result.finishReason === "length") addNotice("info", `The answer reached the limit of ${payload.max_tokens} tokens.`);
  }

  // Say when the engine has let go of a stopped answer: it checks for Stop between two steps of the model.
  function whenEngineIdle(notice, tokens, total) {
    const engine = browserEngine.engine;
    const since = performance.now();
    const done = () => {
      notice.textContent = `Stopped after ${tokens} and ${fmtMs(total)}. The in-browser engine stopped generating ` +
        `${fmtMs(performance.now() - since)} after Stop.`;
      notice.dataset.released = "yes";
      notice.dataset.releaseMs = String(performance.now() - since);
    };
    if (engine && engine.busy) engine.busy.then(done);
    else done();
  }

  function finishRun(run) {
    const labels = {
      done: ["done", "Done"],
      stopped: ["stopped", "Stopped"],
      error: ["error", "Error"],
      rejected: ["error", "Not sent"],
    };
    const [state, text] = labels[run.result] || ["error", "Error"];
    setStatus(state, text);
    if (run.result === "done") {
      els.meta.textContent = `${run.model} answered from ${run.sourcesNote || "the prompt"}.`;
    } else if (run.result === "stopped") {
      els.meta.textContent = `${run.model || "The model"} was stopped.`;
    } else if (run.result === "error" && run.model) {
      els.meta.textContent = `${run.model} could not finish the answer.`;
    }
    // Chart only requests that measured something comparable: finished ones, and stopped ones that streamed.
    if (run.result === "done" || (run.result === "stopped" && run.ttft !== null)) {
      runs.push(run);
      renderRuns();
    }
  }

  // ------------------------------------------------------------------------------ chart
  function niceCeiling(value) {
    if (value <= 0) return 100;
    const step = niceStep(value / 4);
    return Math.ceil(value / step) * step;
  }

  function niceStep(raw) {
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    for (const factor of [1, 2, 2.5, 5, 10]) {
      if (raw <= factor * magnitude) return factor * magnitude;
    }
    return 10 * magnitude;
  }

  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function recent(role) {
    return runs.filter((r) => r.role === role).slice(-HISTORY);
  }

  function renderChart(role, scaleMax) {
    const svg = $(`chart-${role}`);
    const width = Math.max(svg.clientWidth, 200);
    const height = Math.max(svg.clientHeight, 120);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const left = 48;
    const right = 6;
    const top = 8;
    const bottom = 20;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const y = (ms) => top + plotH - (Math.min(ms, scaleMax) / scaleMax) * plotH;

    const step = niceStep(scaleMax / 4);
    for (let tick = 0; tick <= scaleMax + 1e-9; tick += step) {
      const ty = y(tick);
      svg.appendChild(svgEl("line", { class: "grid-line", x1: left, x2: width - right, y1: ty, y2: ty }));
      svg.appendChild(svgEl("text", { x: left - 6, y: ty + 4, "text-anchor": "end" }, fmtTick(tick, scaleMax)));
    }

    const items = recent(role);
    if (!items.length) {
      svg.appendChild(
        svgEl("text", { class: "empty-note", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle" },
          "No requests yet")
      );
    }
    const slot = plotW / HISTORY;
    const barW = Math.max(6, Math.min(34, slot * 0.62));
    items.forEach((run, i) => {
      const x = left + slot * i + (slot - barW) / 2;
      const group = svgEl("g", { class: `run${run.result === "stopped" ? " stopped" : ""}`, "data-n": run.n });
      const total = run.total ?? 0;
      const ttft = run.ttft ?? 0;
      group.appendChild(svgEl("rect", { class: "bar-total", x, y: y(total), width: barW, height: Math.max(1, y(0) - y(total)), rx: 2 }));
      group.appendChild(svgEl("rect", { class: "bar-ttft", x, y: y(ttft), width: barW, height: Math.max(1, y(0) - y(ttft)), rx: 2 }));
      group.appendChild(svgEl("text", { x: x + barW / 2, y: height - 5, "text-anchor": "middle" }, `#${run.n}`));
      group.appendChild(
        svgEl("title", {},
          `#${run.n} (${run.question}) ${run.model || role}: first token ${fmtMs(run.ttft)}, total ${fmtMs(run.total)}, ` +
            `${run.tokens} tokens${run.result === "stopped" ? " (stopped)" : ""}`)
      );
      svg.appendChild(group);
    });

    $(`summary-${role}`).textContent = summarize(items);
  }

  // Both medians over the same runs, the finished ones: a stopped run has a first token but a cut-short total,
  // so counting it in one median and not the other could put the median first token above the median total.
  function summarize(items) {
    if (!items.length) return "";
    const finished = items.filter((r) => r.result === "done" && r.ttft !== null && r.total !== null);
    const stopped = items.length - finished.length;
    const stoppedNote = stopped ? ` · ${stopped} stopped (not counted)` : "";
    if (!finished.length) return `no finished request yet${stoppedNote}`;
    return `median first token ${fmtMs(median(finished.map((r) => r.ttft)))}` +
      ` · median total ${fmtMs(median(finished.map((r) => r.total)))}` +
      ` · ${finished.length} finished${stoppedNote}`;
  }

  function renderCharts() {
    const shown = ROLES.flatMap(recent);
    const scaleMax = niceCeiling(Math.max(100, ...shown.map((r) => r.total ?? 0)));
    for (const role of ROLES) renderChart(role, scaleMax);
  }

  function renderTable() {
    const rows = runs.slice(-ROLES.length * HISTORY).reverse().map((run) => {
      const tr = document.createElement("tr");
      // the unrounded figures, for scripts (benchmarks/browser_engine.py)
      Object.assign(tr.dataset, {
        engine: run.role, result: run.result, question: run.question,
        ttftMs: run.ttft ?? "", totalMs: run.total ?? "", tokens: run.tokens, rate: run.rate ?? "",
      });
      const cells = [
        `#${run.n}`,
        `${run.question} ${run.prompt}`,
        `${ROLE_LABELS[run.role]} · ${run.model || "?"}`,
        fmtMs(run.ttft),
        fmtMs(run.total),
        String(run.tokens),
        fmtRate(run.rate),
        run.result,
      ];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 1) {
          td.className = "question";
          td.title = run.prompt;
        }
        tr.appendChild(td);
      });
      return tr;
    });
    els.runsBody.replaceChildren(...rows);
  }

  function renderRuns() {
    renderCharts();
    renderTable();
  }

  // ------------------------------------------------------------------------------ wiring
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  els.form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send();
    }
  });
  els.stop.addEventListener("click", () => {
    if (controller) controller.abort();
  });
  for (const input of els.form.querySelectorAll('input[name="role"]')) input.addEventListener("change", showRoleNote);
  els.temperature.addEventListener("input", () => {
    els.temperatureValue.textContent = Number(els.temperature.value).toFixed(2);
  });
  if ("ResizeObserver" in window) {
    new ResizeObserver(() => renderCharts()).observe(document.querySelector(".charts"));
  }
  window.addEventListener("resize", renderCharts);

  renderCharts();
  loadInfo();
  detectWebGPU();
})();
