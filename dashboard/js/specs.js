// Forms from the param spec language devices advertise:
//   bool | int[:MIN..MAX] | num[:MIN..MAX] | str[:MAXLEN] | enum:a|b|c   (trailing ? = optional)
// The API and the device validate; the form only shapes input and converts types.

import { h } from "./dom.js";

export function parseSpec(raw) {
  const text = String(raw ?? "");
  const optional = text.endsWith("?");
  const body = optional ? text.slice(0, -1) : text;
  const colon = body.indexOf(":");
  const kind = colon === -1 ? body : body.slice(0, colon);
  const arg = colon === -1 ? "" : body.slice(colon + 1);
  const spec = { kind, optional, raw: text };
  if (kind === "int" || kind === "num") {
    const [lo, hi] = arg.split("..");
    if (lo) spec.min = Number(lo);
    if (hi) spec.max = Number(hi);
  } else if (kind === "str") {
    if (arg) spec.maxLength = Number(arg);
  } else if (kind === "enum") {
    spec.choices = arg ? arg.split("|") : [];
  } else if (kind !== "bool") {
    spec.kind = "str"; // an unknown spec: let the person type, the device decides
  }
  return spec;
}

export function describeSpec(spec) {
  const opt = spec.optional ? ", optional" : "";
  switch (spec.kind) {
    case "int":
    case "num": {
      const noun = spec.kind === "int" ? "whole number" : "number";
      if (spec.min !== undefined && spec.max !== undefined) return `${noun} ${spec.min}–${spec.max}${opt}`;
      if (spec.min !== undefined) return `${noun} ≥ ${spec.min}${opt}`;
      if (spec.max !== undefined) return `${noun} ≤ ${spec.max}${opt}`;
      return `${noun}${opt}`;
    }
    case "str":
      return spec.maxLength ? `text, up to ${spec.maxLength} characters${opt}` : `text${opt}`;
    case "bool":
      return spec.optional ? "true or false, optional" : "";
    case "enum":
      return spec.optional ? "optional" : "";
    default:
      return "";
  }
}

let fieldCounter = 0;

// One labelled input for one parameter; `name` is the param name.
export function buildField(name, rawSpec) {
  const spec = parseSpec(rawSpec);
  const id = `param-${++fieldCounter}`;
  const hintId = `${id}-hint`;
  const hint = describeSpec(spec);
  let input;
  if (spec.kind === "bool" && !spec.optional) {
    input = h("input", { type: "checkbox", id, name, class: "switch", dataset: { kind: "bool" } });
    return h(
      "div",
      { class: "field field-check" },
      input,
      h("label", { for: id }, name),
    );
  }
  if (spec.kind === "bool" || spec.kind === "enum") {
    const choices = spec.kind === "bool" ? ["true", "false"] : spec.choices;
    input = h(
      "select",
      { id, name, dataset: { kind: spec.kind }, "aria-describedby": hint ? hintId : undefined },
      spec.optional ? h("option", { value: "" }, "(not set)") : null,
      choices.map((c) => h("option", { value: c }, c)),
    );
  } else {
    const numeric = spec.kind === "int" || spec.kind === "num";
    input = h("input", {
      id,
      name,
      type: numeric ? "number" : "text",
      inputmode: numeric ? (spec.kind === "int" ? "numeric" : "decimal") : undefined,
      step: numeric ? (spec.kind === "int" ? "1" : "any") : undefined,
      min: spec.min,
      max: spec.max,
      maxlength: spec.maxLength,
      required: !spec.optional,
      autocomplete: "off",
      dataset: { kind: spec.kind },
      "aria-describedby": hint ? hintId : undefined,
    });
  }
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, name),
    input,
    hint ? h("small", { id: hintId, class: "hint" }, hint) : null,
  );
}

// The params object from a form built with buildField; empty optional fields are left out.
export function readParams(form) {
  const params = {};
  for (const el of form.querySelectorAll("[data-kind]")) {
    const kind = el.dataset.kind;
    if (el.type === "checkbox") {
      params[el.name] = el.checked;
      continue;
    }
    const value = el.value;
    if (value === "") continue;
    if (kind === "int" || kind === "num") {
      const n = Number(value);
      params[el.name] = Number.isFinite(n) ? n : value;
    } else if (kind === "bool") {
      params[el.name] = value === "true";
    } else {
      params[el.name] = value;
    }
  }
  return params;
}

// An action whose only parameter is a short enum becomes one button per choice.
export function quickChoices(paramSpecs) {
  const names = Object.keys(paramSpecs || {});
  if (names.length !== 1) return null;
  const spec = parseSpec(paramSpecs[names[0]]);
  if (spec.kind !== "enum" || spec.choices.length > 4 || spec.optional) return null;
  return { param: names[0], choices: spec.choices };
}
