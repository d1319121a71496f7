// The routing explorer: vanilla JavaScript over the data moe_lib.site.explorer_page inlines.
// No library and no network: the page works from disk, in Quarto's HTML and standalone.
// Text from the data is always set with textContent, never parsed as HTML.
"use strict";

function mountRoutingExplorer(root, data) {
  const state = { model: 0, view: "tokens", target: 0, meaning: 0, colourLayer: 0, layer: 0, expert: 0 };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat(Infinity)) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function select(label, testid, options, value, onChange) {
    const control = el("select", { "data-testid": testid, on: { change: (e) => onChange(Number(e.target.value)) } },
      options.map((text, i) => el("option", { value: String(i), text: text })));
    control.value = String(value);
    return el("label", { class: "mx-control" }, label + " ", control);
  }

  const percent = (x, digits = 1) => (100 * x).toFixed(digits) + " %";
  const quoted = (token) => JSON.stringify(token);
  const model = () => data.models[state.model];

  // An expert's chip: its number on a colour of its own (golden-angle hues; the number
  // carries the identity, the colour only helps the eye follow it from layer to layer).
  function chip(layer, expert) {
    const hue = Math.round((expert * 137.508) % 360);
    return el("button", {
      class: "mx-chip", type: "button", style: `background: hsl(${hue} 60% 86%)`,
      title: `layer ${layer}, expert ${expert}: open its view`, "data-testid": "route-chip",
      on: { click: () => { Object.assign(state, { view: "experts", layer: model().layers.indexOf(layer), expert }); render(); } },
    }, String(expert));
  }

  function routeChips(route) {
    const layers = model().layers;
    return el("span", { class: "mx-route" }, route.map((expert, i) => [i ? el("span", { class: "mx-arrow", text: "→" }) : null,
      chip(layers[i], expert)]));
  }

  // A context window with each token's mark as its background: "1" top-1 to the expert in
  // question, "2" a lower slot, "0" elsewhere; the centre token is outlined.
  function context(pieces, marks, centre) {
    return el("span", { class: "mx-context" }, pieces.map((piece, i) => el("span", {
      class: `mx-token mx-mark-${marks[i]}` + (i === centre ? " mx-centre" : ""),
      text: piece.replace(/\n/g, "⏎"),
    })));
  }

  function legend(what) {
    return el("p", { class: "mx-legend" },
      el("span", { class: "mx-token mx-mark-1", text: "top-1" }), ` ${what} as its top-1 expert; `,
      el("span", { class: "mx-token mx-mark-2", text: "lower slot" }), " among its other top-k experts; ",
      el("span", { class: "mx-token mx-centre", text: "outlined" }), " the token the example is about.");
  }

  function table(header, rows, testid) {
    return el("table", { class: "mx-table", "data-testid": testid },
      el("thead", {}, el("tr", {}, header.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
  }

  function tokenView() {
    const targets = model().targets;
    const target = targets[state.target];
    const meaning = target.meanings[state.meaning];
    const layer = model().layers[state.colourLayer];
    const controls = el("div", { class: "mx-controls" },
      select("Token", "select-target", targets.map((t) => quoted(t.target)), state.target,
        (i) => { Object.assign(state, { target: i, meaning: 0 }); render(); }),
      select("Meaning", "select-meaning", target.meanings.map((m) => `${m.meaning} (${m.n_occurrences})`), state.meaning,
        (i) => { state.meaning = i; render(); }),
      select("Colour by layer", "select-colour-layer", model().layers.map(String), state.colourLayer,
        (i) => { state.colourLayer = i; render(); }));
    const others = target.meanings.filter((m) => m !== meaning).map((m) => m.meaning);
    // The meaning's most taken routes; the data hold each meaning's first max_routes_shown.
    const shared = target.routes.filter((r) => (r.counts[meaning.meaning] || 0) > 0)
      .sort((a, b) => b.counts[meaning.meaning] - a.counts[meaning.meaning]).slice(0, data.max_routes_shown);
    const routes = table(["Route (top-1 expert per layer)", `${meaning.meaning}`, ...others],
      shared.map((r) => [routeChips(r.route), String(r.counts[meaning.meaning]),
        ...others.map((o) => (r.counts[o] ? String(r.counts[o]) : ""))]), "shared-routes");
    const occurrences = el("ol", { class: "mx-occurrences", "data-testid": "occurrences" },
      meaning.occurrences.map((o) => el("li", { class: "mx-occurrence", "data-testid": "occurrence" },
        routeChips(o.route), " ", context(o.pieces, o.marks[state.colourLayer], o.centre),
        el("span", { class: "mx-source", text: o.source }))));
    return el("div", {}, controls,
      el("p", { "data-testid": "token-summary" }, `${quoted(target.target)} meaning `, el("strong", { text: meaning.meaning }),
        `: ${meaning.n_occurrences} occurrences in the probe, taking ${meaning.n_routes} distinct top-1 routes through layers `
        + `${model().layers.join(", ")}. The routes this meaning takes most, with how many occurrences of each meaning take them:`),
      routes,
      el("p", {}, `${meaning.occurrences.length} of the ${meaning.n_occurrences} occurrences, drawn at random: `
        + `each one's route, and its context coloured by layer ${layer}.`),
      legend(`goes to the occurrence's own expert in layer ${layer}`),
      occurrences);
  }

  // Each domain's two shares as bars on one scale, the largest share of the table filling the cell.
  function bars(domains) {
    const largest = Math.max(...domains.flatMap(([, share, probe]) => [share, probe]), 1e-9);
    const width = (x) => `width: ${(100 * x / largest).toFixed(1)}%`;
    return table(["Domain", "Share of the expert's tokens", "Share of the probe", "Expert (blue) and probe (grey)"],
      domains.map(([domain, share, probe]) => [domain, percent(share), percent(probe),
        el("span", { class: "mx-bars" }, el("span", { class: "mx-bar mx-bar-expert", style: width(share) }),
          el("span", { class: "mx-bar mx-bar-probe", style: width(probe) }))]), "domain-shares");
  }

  function expertView() {
    const layers = model().layers;
    const info = model().experts[state.layer][state.expert];
    const layer = layers[state.layer];
    const card = `${data.cards_page}#${model().name}-L${layer}-E${state.expert}`;
    const controls = el("div", { class: "mx-controls" },
      select("Layer", "select-layer", layers.map(String), state.layer, (i) => { state.layer = i; render(); }),
      select("Expert", "select-expert", model().experts[state.layer].map((e) => String(e.expert)), state.expert,
        (i) => { state.expert = i; render(); }),
      el("a", { href: card, class: "mx-card-link", "data-testid": "card-link", text: "Its card" }));
    const nExperts = model().n_experts;
    return el("div", {}, controls,
      el("p", { "data-testid": "expert-summary" }, `Expert ${info.expert} of layer ${layer} is the top-1 expert of `
        + `${info.n_top1.toLocaleString("en")} of the probe's ${info.n_tokens.toLocaleString("en")} tokens `
        + `(${percent(info.load)}; an even split would give each of the ${nExperts} experts ${percent(1 / nExperts)}).`),
      el("h4", { text: "Its most frequent input tokens" }),
      table(["Token", "Tokens routed (top-1)", "Share of the token's occurrences"],
        info.top_tokens.map(([token, n, share]) => [el("code", { text: quoted(token) }), String(n), percent(share)]), "top-tokens"),
      el("h4", { text: "Its most characteristic tokens" }),
      info.characteristic.length
        ? table(["Token", "Lift (1 = as often as its frequency)", "Share of the token's occurrences"],
          info.characteristic.map(([token, lift, share]) => [el("code", { text: quoted(token) }), lift.toFixed(1), percent(share)]),
          "characteristic-tokens")
        : el("p", { text: `No token seen at least ${data.min_count} times reaches it.` }),
      el("h4", { text: "Where its tokens come from" }), bars(info.domains),
      el("h4", { text: "Examples" }), legend("goes to this expert"),
      el("ol", { class: "mx-occurrences", "data-testid": "examples" }, info.examples.map((x) => el("li", { class: "mx-occurrence" },
        context(x.pieces, x.marks, x.centre), el("span", { class: "mx-source", text: x.domain })))));
  }

  function render() {
    const tabs = el("div", { class: "mx-tabs", role: "tablist" }, [["tokens", "Polysemantic tokens"], ["experts", "Experts"]]
      .map(([view, text]) => el("button", {
        type: "button", role: "tab", class: "mx-tab" + (state.view === view ? " mx-tab-active" : ""),
        "aria-selected": String(state.view === view), "data-testid": `tab-${view}`,
        on: { click: () => { state.view = view; render(); } },
      }, text)));
    const models = select("Model", "select-model", data.models.map((m) => m.name), state.model, (i) => {
      Object.assign(state, { model: i, target: 0, meaning: 0, colourLayer: 0, layer: 0, expert: 0 }); render();
    });
    root.replaceChildren(el("div", { class: "mx-controls" }, models), tabs,
      el("div", { class: "mx-panel", "data-testid": `panel-${state.view}` }, state.view === "tokens" ? tokenView() : expertView()));
  }

  render();
}
