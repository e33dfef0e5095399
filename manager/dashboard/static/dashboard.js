// shoal dashboard: renders the state the daemon streams over server-sent events (/events).
// Plain JavaScript, no framework; text goes through textContent only (names are user data).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function shortTime(stamp) {
  if (!stamp) return "";
  const d = new Date(stamp);
  return isNaN(d) ? stamp : d.toLocaleTimeString();
}

function renderServices(services) {
  const body = document.querySelector("#services tbody");
  body.replaceChildren(...services.map((s) => {
    const ratio = s.desired ? Math.min(1, s.running / s.desired) : 1;
    const bar = el("span", { class: "bar" }, el("span", { style: `width:${Math.round(ratio * 100)}%` }));
    const replicas = el("td", {}, el("span", {
      class: "replicas" + (s.running < s.desired ? " short" : ""), text: `${s.running}/${s.desired}`,
    }), bar);
    let update = "";
    if (s.update) update = `${s.update.state} ${s.update.updated}/${s.update.total}` + (s.update.message ? ` — ${s.update.message}` : "");
    return el("tr", { "data-service": s.name }, el("td", { text: s.name }), el("td", { text: s.mode }),
      el("td", { text: s.image }), replicas, el("td", { class: "update", text: update }));
  }));
}

function taskBox(t) {
  return el("li", { class: "task", "data-state": t.state, "data-service-id": t.service, "data-task": t.id,
                    title: t.err || t.message || "" },
    el("span", { class: "name", text: t.name }), el("span", { class: "state", text: t.state }));
}

function renderNodes(nodes, tasks, services) {
  const names = Object.fromEntries(services.map((s) => [s.id, s.name]));
  const byNode = new Map(nodes.map((n) => [n.id, []]));
  const unassigned = [];
  for (const t of tasks) (byNode.get(t.node) || unassigned).push(t);
  const column = (attrs, head, list) => el("div", attrs, head,
    el("ul", { class: "tasks" }, ...list.map((t) => {
      const box = taskBox(t);
      box.setAttribute("data-service", names[t.service] || "");
      return box;
    })));
  const columns = nodes.map((n) => column(
    { class: "node", "data-node": n.hostname, "data-node-id": n.id, "data-state": n.state },
    el("div", { class: "head" },
      el("div", { class: "hostname", text: (n.leader ? "★ " : "") + n.hostname }),
      el("div", { class: "meta", text: `${n.role} · ${n.state} · ${n.availability}` })),
    byNode.get(n.id)));
  if (unassigned.length) {
    columns.push(column({ class: "node unassigned", "data-node": "" },
      el("div", { class: "head" }, el("div", { class: "hostname", text: "not placed" })), unassigned));
  }
  document.getElementById("nodes").replaceChildren(...columns);
}

function renderEvents(events) {
  document.getElementById("events").replaceChildren(...events.map((e) => el("li", { "data-kind": e.kind },
    el("time", { datetime: e.time, text: shortTime(e.time) }), el("span", { text: e.text }),
    e.detail ? el("span", { class: "detail", text: e.detail }) : null)));
}

function render(state) {
  document.getElementById("not-manager").hidden = state.manager;
  if (!state.manager) return;
  renderServices(state.services);
  renderNodes(state.nodes, state.tasks, state.services);
  renderEvents(state.events);
  const hidden = document.getElementById("hidden-tasks");
  hidden.hidden = !state.hidden_tasks;
  hidden.textContent = state.hidden_tasks ? `${state.hidden_tasks} more tasks not shown` : "";
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("events");
  source.addEventListener("open", () => { status.dataset.state = "live"; status.textContent = "live"; });
  source.addEventListener("error", () => { status.dataset.state = "reconnecting"; status.textContent = "reconnecting…"; });
  source.addEventListener("state", (message) => render(JSON.parse(message.data)));
}

connect();
