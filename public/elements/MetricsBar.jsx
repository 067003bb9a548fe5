import { Badge } from "@/components/ui/badge";
import { useState } from "react";

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

function usd(value) {
  if (!value) return "$0";
  return value < 0.01 ? `$${value.toFixed(6)}` : `$${value.toFixed(4)}`;
}

function tokens(value, estimated) {
  return `${estimated ? "~" : ""}${value ?? 0}`;
}

// A resumed thread hands props over as a JSON string (Chainlit 2.12 reads the column unparsed).
function metricsProps() {
  if (typeof props === "string") {
    try {
      return JSON.parse(props);
    } catch (error) {
      return {};
    }
  }
  return props || {};
}

export default function MetricsBar() {
  const [open, setOpen] = useState(false);
  const props = metricsProps();
  const legs = props.legs || [];
  const rate = props.decode_tokens_per_s;
  return (
    <div className="flex flex-col gap-1 text-xs" data-testid="metrics-bar">
      <div className="flex flex-wrap items-center gap-1">
        <Badge variant="default" data-testid="metrics-model" title="the model that wrote this answer">
          {props.answered_by ? `${props.answered_role ? props.answered_role + " model · " : ""}${props.answered_by}` : "no model answered"}
        </Badge>
        {props.escalation_reason ? (
          <Badge variant="destructive" data-testid="metrics-escalation">escalated: {props.escalation_reason}</Badge>
        ) : null}
        <Badge variant="outline" data-testid="metrics-ttft">TTFT {ms(props.ttft_ms)}</Badge>
        {props.thinking_ms !== null && props.thinking_ms !== undefined ? (
          <>
            <Badge variant="outline" data-testid="metrics-thinking">
              thinking {ms(props.thinking_ms)} · {tokens(props.reasoning_tokens, props.reasoning_estimated)} tok
            </Badge>
            <Badge variant="outline" data-testid="metrics-first-answer">first answer token {ms(props.first_answer_ms)}</Badge>
          </>
        ) : null}
        {props.truncated ? (
          <Badge variant="destructive" data-testid="metrics-truncated">cut by its token budget</Badge>
        ) : null}
        <Badge variant="outline">total {ms(props.total_ms)}</Badge>
        <Badge variant="outline" data-testid="metrics-rate">{rate ? `${rate.toFixed(1)} tok/s` : "tok/s –"}</Badge>
        <Badge variant="outline" data-testid="metrics-tokens">
          {tokens(props.prompt_tokens, props.tokens_estimated)} in / {tokens(props.completion_tokens, props.tokens_estimated)} out
          {props.reasoning_tokens ? ` (${tokens(props.answer_tokens, props.tokens_estimated)} answer)` : ""}
        </Badge>
        <Badge variant="secondary" data-testid="metrics-cost">cloud {usd(props.cost_usd)}</Badge>
        {legs.length ? (
          <Badge variant="outline" data-testid="metrics-confidence">
            {props.confidence === null || props.confidence === undefined
              ? "confidence n/a (no logprobs)"
              : `confidence ${props.confidence.toFixed(2)}`}
          </Badge>
        ) : null}
        <button className="underline opacity-70" onClick={() => setOpen(!open)} data-testid="metrics-details-toggle">
          {open ? "less" : "details"}
        </button>
      </div>
      {open ? (
        <div className="flex flex-col gap-0.5 opacity-80" data-testid="metrics-details">
          <div>
            retrieval {ms(props.retrieval_ms)} · prompt {ms(props.prompt_ms)} · generation {ms(props.generation_ms)} ·
            session total {usd(props.session_cost_usd)}
          </div>
          {legs.map((leg, i) => (
            <div key={i}>
              {leg.role} · {leg.model} · {leg.outcome}
              {leg.reason ? ` (${leg.reason})` : ""} · TTFT {ms(leg.ttft_ms)} · gen {ms(leg.generation_ms)} · total{" "}
              {ms(leg.total_ms)} · {tokens(leg.prompt_tokens, leg.tokens_estimated)}/
              {tokens(leg.completion_tokens, leg.tokens_estimated)} tok ·{" "}
              {leg.decode_tokens_per_s ? `${leg.decode_tokens_per_s.toFixed(1)} tok/s` : "tok/s –"} · {usd(leg.cost_usd)}
              {leg.thinking_ms !== null && leg.thinking_ms !== undefined
                ? ` · thinking ${ms(leg.thinking_ms)}, ${tokens(leg.reasoning_tokens, leg.reasoning_estimated)} tok · first answer token ${ms(leg.answer_ttft_ms)} · ${tokens(leg.answer_tokens, leg.tokens_estimated)} answer tok`
                : ""}
              {leg.truncated ? " · cut by its token budget" : ""}
            </div>
          ))}
          {props.tokens_estimated ? <div>~ token counts estimated with tiktoken (the server sent no usage)</div> : null}
          {props.reasoning_estimated ? (
            <div>~ thinking tokens estimated with tiktoken (the server did not count them separately)</div>
          ) : null}
        </div>
      ) : null}
    </div>
  );
}
