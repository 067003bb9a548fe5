import { Badge } from "@/components/ui/badge";
import { useEffect, useState } from "react";

// A resumed thread hands props over as a JSON string (Chainlit 2.12 reads the column unparsed).
function sourcesProps() {
  if (typeof props === "string") {
    try {
      return JSON.parse(props);
    } catch (error) {
      return {};
    }
  }
  return props || {};
}

function Excerpt({ segments, text }) {
  const runs = segments && segments.length ? segments : [[text || "", false]];
  return (
    <div className="whitespace-pre-wrap text-sm leading-relaxed" data-testid="source-excerpt">
      {runs.map(([run, match], i) =>
        match ? (
          <mark key={i} style={{ background: "rgba(250, 204, 21, 0.45)", color: "inherit", borderRadius: 2, padding: "0 1px" }}>
            {run}
          </mark>
        ) : (
          <span key={i}>{run}</span>
        )
      )}
    </div>
  );
}

// The sources of one answer, listed under it and collapsed. A citation [n] in the answer is a link to
// #source-<anchor>-<n>: clicking it opens exactly that source here (and closes the others).
export default function Sources() {
  const data = sourcesProps();
  const anchor = data.anchor || "";
  const sources = data.sources || [];
  // The open source lives outside the component (see public/chat.js): Chainlit may render the element
  // again, and a citation may be clicked before the element has loaded.
  const store = (window.__sourcesOpen = window.__sourcesOpen || {});
  const [open, setOpenState] = useState(store[anchor] ?? null);
  const prefix = `#source-${anchor}-`;

  function setOpen(number, scroll) {
    store[anchor] = number;
    setOpenState(number);
    if (scroll && number !== null) {
      setTimeout(() => {
        const row = document.getElementById(`source-${anchor}-${number}`);
        if (row) row.scrollIntoView({ block: "nearest", behavior: "smooth" });
      }, 30);
    }
  }

  useEffect(() => {
    const onOpenSource = (event) => {
      if (event.detail && event.detail.anchor === anchor) setOpen(event.detail.number, true);
    };
    // Without public/chat.js the click itself is caught here.
    function onClick(event) {
      const link = event.target && event.target.closest ? event.target.closest("a") : null;
      const href = link ? link.getAttribute("href") || "" : "";
      if (!href.startsWith(prefix)) return;
      event.preventDefault();
      event.stopPropagation();
      setOpen(parseInt(href.slice(prefix.length), 10), true);
    }
    if (store[anchor] !== undefined && store[anchor] !== open) setOpenState(store[anchor]);
    window.addEventListener("open-source", onOpenSource);
    document.addEventListener("click", onClick, true);
    return () => {
      window.removeEventListener("open-source", onOpenSource);
      document.removeEventListener("click", onClick, true);
    };
  }, [anchor]);

  if (!sources.length) return null;
  const given = sources[0].cited_by === "given";
  const mark = data.app_mark || "†";
  const dangling = data.dangling || [];
  return (
    <div className="flex flex-col gap-1 text-sm" data-testid="sources">
      <div className="text-xs text-muted-foreground">
        {given ? "Sources given to the model (the answer cites none)" : "Sources cited in this answer"} — click one
        to read the passage
        {sources.some((s) => s.cited_by === "app")
          ? ` · ${mark}: the model did not cite it; the app found the sentence's words in it`
          : ""}
      </div>
      {sources.map((source) => {
        const isOpen = open === source.number;
        return (
          <div
            key={source.number}
            id={`source-${anchor}-${source.number}`}
            data-testid="source"
            data-number={source.number}
            data-open={isOpen ? "true" : "false"}
            className="rounded-md border border-border"
          >
            <button
              type="button"
              className="flex w-full items-center gap-2 px-2 py-1 text-left hover:bg-muted"
              onClick={() => setOpen(isOpen ? null : source.number)}
              aria-expanded={isOpen}
              data-testid="source-toggle"
            >
              <span className="font-mono text-xs">[{source.number}]</span>
              <span className="flex-grow truncate font-medium" data-testid="source-label">
                {source.label}
              </span>
              <Badge variant="outline">score {Number(source.score).toFixed(2)}</Badge>
              <Badge variant={source.cited_by === "given" ? "outline" : "secondary"} data-testid="source-cited-by">
                {{ model: "cited", app: `attributed by the app ${mark}`, given: "not cited" }[source.cited_by] ||
                  source.cited_by}
              </Badge>
              <span className="text-xs text-muted-foreground">{isOpen ? "▲" : "▼"}</span>
            </button>
            {isOpen ? (
              <div className="border-t border-border px-3 py-2" data-testid="source-body">
                <div className="mb-1 text-xs text-muted-foreground">{source.location}</div>
                <Excerpt segments={source.segments} text={source.excerpt} />
              </div>
            ) : null}
          </div>
        );
      })}
      {dangling.length ? (
        <div className="text-xs text-muted-foreground" data-testid="sources-dangling">
          Citations that point at no source: {dangling.map((n) => `[${n}]`).join(", ")}
        </div>
      ) : null}
    </div>
  );
}
