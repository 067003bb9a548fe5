// The demo page's in-browser engine: the app's GGUF model run by llama.cpp compiled to WebAssembly
// (npm @wllama/wllama, served by this app from its node_modules). demo.js imports this module only when
// the engine is used. Nothing here talks to any server but the app's own.

let runtimePromise = null;

function importRuntime(moduleUrl) {
  runtimePromise ??= import(moduleUrl);
  return runtimePromise;
}

function absolute(url) {
  return new URL(url, window.location.href).href;
}

function withTimeout(promise, ms) {
  return Promise.race([promise, new Promise((resolve) => setTimeout(() => resolve(null), ms))]);
}

// Where the model will run: WebGPU when the browser gives an adapter, else WebAssembly on the CPU. Threads need
// shared memory, which a cross-origin isolated page has; then the page uses half the cores (at most 4), as
// llama.cpp's server does: on 2 cores that is 1 thread, since a second one competing with the page (and
// anything else on the machine) slows decoding down. `?threads=N` in the page's URL sets the count, and
// `?batch=N` the prompt batch (default 64: the runtime checks for Stop between batches).
export async function chooseBackend() {
  const isolated = window.crossOriginIsolated === true;
  const cores = navigator.hardwareConcurrency || 1;
  const params = new URLSearchParams(window.location.search);
  const requested = Number(params.get("threads"));
  let threads = 1;
  if (isolated) threads = Number.isInteger(requested) && requested > 0 ? requested : Math.max(1, Math.min(4, Math.floor(cores / 2)));
  let adapter = null;
  if (navigator.gpu && params.get("gpu") !== "0") {
    try {
      adapter = await withTimeout(navigator.gpu.requestAdapter(), 2000);
    } catch (err) {
      adapter = null;
    }
  }
  const batch = Number(params.get("batch"));
  return { webgpu: !!adapter, isolated, threads, cores, batch: Number.isInteger(batch) && batch > 0 ? batch : 64 };
}

export function describeBackend(backend) {
  let cpu;
  if (!backend.isolated) cpu = "WebAssembly, 1 thread (the page is not cross-origin isolated, so no threads)";
  else if (backend.threads > 1) cpu = `WebAssembly, ${backend.threads} threads (the page is cross-origin isolated)`;
  else cpu = `WebAssembly, 1 thread (the page is cross-origin isolated; 1 thread on ${backend.cores} cores)`;
  if (backend.compat) cpu += ", compatibility build (this browser lacks WebAssembly JSPI or Memory64: slower)";
  if (backend.webgpu) return `WebGPU, with ${cpu}`;
  return backend.webgpuError ? `${cpu}; WebGPU failed: ${backend.webgpuError}` : cpu;
}

// Load the runtime and the model. onProgress({phase, loaded, total, cached}); phase is "download" (bytes
// from the app) then "start" (the runtime reads the model); cached: the model came from the browser's cache.
export async function loadEngine(info, onProgress) {
  const runtime = await importRuntime(info.runtime.module_url);
  const backend = await chooseBackend();
  const modelUrl = absolute(info.model.url);
  const t0 = performance.now();
  let wllama = newWllama(runtime, info);
  const cached = (await wllama.modelManager.getModels()).some((model) => model.url === modelUrl);
  const load = (instance) => instance.loadModelFromUrl(modelUrl, {
    n_ctx: info.context_window,
    // The runtime checks for Stop between two steps: a small batch keeps each step of reading the prompt short.
    n_batch: backend.batch,
    n_ubatch: backend.batch,
    n_threads: backend.threads,
    n_gpu_layers: backend.webgpu ? undefined : 0,
    n_parallel: 1,
    progressCallback: ({ loaded, total }) => {
      onProgress({ phase: loaded >= total ? "start" : "download", loaded, total, cached });
    },
  });
  try {
    await load(wllama);
  } catch (err) {
    if (!backend.webgpu) throw err;
    // A GPU the runtime cannot use: run on the CPU instead, and say so.
    await wllama.exit().catch(() => {});
    backend.webgpu = false;
    backend.webgpuError = String(err.message || err);
    wllama = newWllama(runtime, info);
    await load(wllama);
  }
  const loadMs = performance.now() - t0;
  backend.threads = wllama.getNumThreads();
  backend.multithread = wllama.isMultithread();
  backend.compat = wllama.getWorkerResources().compat;
  return new BrowserEngine(wllama, runtime, backend, { loadMs, cached, modelName: info.model.name });
}

function newWllama(runtime, info) {
  const wllama = new runtime.Wllama(
    { default: absolute(info.runtime.wasm_url) },
    { logger: runtime.LoggerWithoutDebug, suppressNativeLog: true, allowOffline: true }
  );
  // The runtime's default "compat" build for browsers without JSPI/Memory64 comes from a CDN: use the copy
  // this app serves, or none (then such browsers run without WebGPU).
  wllama.setCompat(
    info.runtime.compat_worker_url
      ? { worker: absolute(info.runtime.compat_worker_url), wasm: absolute(info.runtime.compat_wasm_url) }
      : null
  );
  return wllama;
}

export class BrowserEngine {
  constructor(wllama, runtime, backend, load) {
    this.wllama = wllama;
    this.runtime = runtime;
    this.backend = backend;
    this.load = load;
    this.busy = null; // the running generation's promise, settled once the runtime has let go of it
  }

  get description() {
    return describeBackend(this.backend);
  }

  // Stream one answer for `messages` (the server's grounded prompt) through the model's chat template.
  // onToken(text) for every piece, onPromptProgress({processed, total}) while the prompt is read.
  // Resolves to {stopped, completionTokens, promptTokens, tokensPerS, finishReason}; `signal` stops it.
  generate(messages, { temperature, maxTokens, signal, onToken, onPromptProgress }) {
    const run = this.run(messages, { temperature, maxTokens, signal, onToken, onPromptProgress });
    this.busy = run.catch(() => {}).finally(() => {
      this.busy = null;
    });
    return run;
  }

  async run(messages, { temperature, maxTokens, signal, onToken, onPromptProgress }) {
    let pieces = 0;
    let timings = null;
    let usage = null;
    let finishReason = null;
    let firstAt = null;
    let lastAt = null;
    try {
      const stream = await this.wllama.createChatCompletion({
        messages,
        stream: true,
        temperature,
        max_tokens: maxTokens,
        abortSignal: signal,
        return_progress: true,
        cache_prompt: true,
      });
      // After an abort the runtime throws AbortError at its next step and cancels the request; leaving the
      // loop early instead would leave that rejection unhandled, so pieces that arrive meanwhile are dropped.
      for await (const chunk of stream) {
        if (signal.aborted) continue;
        if (chunk.prompt_progress && onPromptProgress) onPromptProgress(chunk.prompt_progress);
        if (chunk.timings) timings = chunk.timings;
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.finish_reason) finishReason = choice.finish_reason;
        const text = choice.delta && choice.delta.content;
        if (text) {
          pieces += 1;
          lastAt = performance.now();
          firstAt ??= lastAt;
          onToken(text);
        }
      }
    } catch (err) {
      if (!(signal.aborted || (err && err.name === "AbortError"))) throw err;
    }
    const stopped = signal.aborted;
    const completionTokens = (usage && usage.completion_tokens) || (timings && timings.predicted_n) || pieces;
    let tokensPerS = timings && timings.predicted_per_second ? timings.predicted_per_second : null;
    if (tokensPerS === null && pieces > 1 && lastAt > firstAt) tokensPerS = ((pieces - 1) * 1000) / (lastAt - firstAt);
    return {
      stopped,
      completionTokens,
      estimated: !(usage || timings),
      promptTokens: (usage && usage.prompt_tokens) || (timings && timings.prompt_n) || null,
      tokensPerS,
      finishReason,
    };
  }
}
