// The operator's dashboard of release-coordinator: vanilla JS over the server's operator API.
//
// - The token is kept in this tab's sessionStorage and sent as "Authorization: Bearer"; it is
//   never put in a URL (the views are "#/..." fragments, which no request carries).
// - Every view polls the API every POLL_MS and redraws a part only when its data changed, so
//   that focus and a half-filled form survive the updates.
// - The DOM is built with createElement/textContent only: nothing from the API is parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1500;
  const TOKEN_KEY = "release-coordinator.operator-token";
  const PAGE = 1000; // the API's largest page
  const SVG = "http://www.w3.org/2000/svg";

  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  const API = new URL((meta("rc-api") || "..").replace(/\/?$/, "/"), document.baseURI);
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let current = null; // the view shown: {key, refresh(), stop()}
  let timer = 0;

  // -- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, API), init);
    } catch (error) {
      throw new ApiError(0, "unreachable", `the server cannot be reached (${error.message})`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const problems = (error.details && error.details.problems) || [];
      const more = problems.map((p) => `${p.path}: ${p.message}`).join("; ");
      const message = (error.message || `${response.status} ${response.statusText}`) +
        (more ? ` (${more})` : "");
      throw new ApiError(response.status, error.code || `http_${response.status}`, message);
    }
    return data;
  }

  const q = encodeURIComponent;

  async function all(path, most = 5) {
    // Every item of a listing, page by page (at most ``most`` pages).
    const items = [];
    let offset = 0;
    for (let i = 0; i < most && offset !== null; i++) {
      const sep = path.includes("?") ? "&" : "?";
      const page = await call("GET", `${path}${sep}limit=${PAGE}&offset=${offset}`);
      items.push(...page.items);
      offset = page.next_offset;
    }
    return items;
  }

  // -- the DOM --------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  // Replace ``region``'s content by ``build()`` when ``data`` differs from the last drawn,
  // keeping the focus on the element of the same data-key if it had it.
  function draw(region, data, build) {
    const key = JSON.stringify(data);
    if (region.dataset.drawn === key) return false;
    const focused = document.activeElement;
    const focusKey = region.contains(focused) ? focused.dataset.key : undefined;
    region.replaceChildren(...[build()].flat().filter((n) => n !== null && n !== undefined && n !== false));
    region.dataset.drawn = key;
    if (focusKey) {
      const same = region.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
      (same || region.querySelector("button, a[href], input"))?.focus();
    }
    return true;
  }

  function announce(text) {
    const region = $("announce");
    region.textContent = "";
    setTimeout(() => {
      region.textContent = text;
    }, 50);
  }

  function showProblem(text) {
    $("problem-text").textContent = text;
    $("problem").hidden = false;
  }

  function clearProblem() {
    $("problem").hidden = true;
    $("problem-text").textContent = "";
  }

  const time = (iso) => (iso ? new Date(iso).toLocaleString() : "");
  const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");
  const badge = (state, label) =>
    h("span", { class: `badge state-${String(state).toLowerCase()}` }, label ?? state);

  function table(caption, head, rows, empty) {
    if (!rows.length) return h("p", { class: "empty" }, empty);
    return h(
      "table",
      {},
      h("caption", { class: caption.hidden ? "visually-hidden" : null }, caption.text ?? caption),
      h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map((cells) =>
        h("tr", {}, cells.map((cell, i) => (i === 0 ? h("th", { scope: "row" }, cell) : h("td", {}, cell)))))),
    );
  }

  function facts(pairs) {
    return h("dl", { class: "facts" }, pairs
      .filter(([, value]) => value !== "" && value !== null && value !== undefined)
      .map(([name, value]) => h("div", {}, h("dt", {}, name), h("dd", {}, value))));
  }

  function link(href, text, key) {
    return h("a", { href, "data-key": key ?? href }, text);
  }

  // -- actions --------------------------------------------------------------------------------

  // A button that POSTs an action; ``confirm`` (a label) first asks, with an optional reason.
  function actionButton({ label, path, done, confirm, reason, onDone }) {
    const box = h("span", { class: "action" });
    const run = async (body, button) => {
      button.disabled = true;
      const before = button.textContent;
      button.textContent = `${label}…`;
      clearProblem();
      try {
        const answer = await call("POST", path, body);
        announce(done(answer));
        if (onDone) onDone(answer);
        else current?.refresh(true);
      } catch (error) {
        if (!handleAuth(error)) showProblem(`${label} failed: ${error.message}`);
        button.disabled = false;
        button.textContent = before;
      }
    };
    const button = h("button", {
      type: "button",
      "data-key": `action:${label}`,
      class: confirm ? "danger" : "primary",
      onclick: () => {
        if (!confirm) {
          run({}, button);
          return;
        }
        button.hidden = true;
        const reasonInput = reason
          ? h("input", { type: "text", id: `reason-${label}`, maxlength: 1000, placeholder: "optional" })
          : null;
        const yes = h("button", { type: "button", class: "danger", "data-key": `confirm:${label}` }, confirm);
        const no = h("button", { type: "button" }, "Back");
        const panel = h(
          "span",
          { class: "confirm", role: "group", "aria-label": `${label}: confirm` },
          reason ? [h("label", { for: `reason-${label}` }, "Reason"), reasonInput] : null,
          yes,
          no,
        );
        yes.addEventListener("click", () => {
          const text = reasonInput ? reasonInput.value.trim() : "";
          run(text ? { reason: text } : {}, yes);
        });
        no.addEventListener("click", () => {
          panel.remove();
          button.hidden = false;
          button.focus();
        });
        box.append(panel);
        (reasonInput || yes).focus();
      },
    }, label);
    box.prepend(button);
    return box;
  }

  // -- views ----------------------------------------------------------------------------------

  function frame(title, sub) {
    const heading = h("h1", { tabindex: -1 }, title);
    const view = h("section", { class: "view" }, sub ? h("p", { class: "crumbs" }, sub) : null, heading);
    $("view").replaceChildren(view);
    return { view, heading };
  }

  function region(parent, title, id) {
    const body = h("div", { class: "region-body", id });
    const headingId = `${id}-title`;
    parent.append(h("section", { class: "region", "aria-labelledby": title ? headingId : null },
      title ? h("h2", { id: headingId }, title) : null, body));
    return body;
  }

  function releasesView() {
    const { view, heading } = frame("Releases");
    const list = region(view, "", "releases");
    let offset = 0;
    const pager = h("p", { class: "pager" });
    view.append(pager);
    return {
      heading,
      async refresh() {
        const page = await call("GET", `releases?limit=50&offset=${offset}`);
        draw(list, page.items, () => table(
          { text: "Releases, newest first", hidden: true },
          ["Name", "Version", "State", "Author", "Created", "State since"],
          page.items.map((r) => [
            link(`#/releases/${q(r.id)}`, r.name, `release:${r.id}`),
            r.version,
            badge(r.state),
            r.author,
            time(r.created_at),
            time(r.state_changed_at),
          ]),
          "No release yet. Create one with POST /releases.",
        ));
        draw(pager, [offset, page.next_offset], () => [
          offset > 0 ? h("button", { type: "button", "data-key": "newer", onclick: () => { offset = Math.max(0, offset - 50); current.refresh(true); } }, "Newer") : null,
          page.next_offset !== null ? h("button", { type: "button", "data-key": "older", onclick: () => { offset = page.next_offset; current.refresh(true); } }, "Older") : null,
        ]);
      },
    };
  }

  const FINAL = new Set(["published", "canceled", "failed"]);
  let services = new Map(); // task service id -> name

  async function serviceName(id) {
    if (!services.has(id)) {
      const items = await all("task-services", 2);
      services = new Map(items.map((s) => [s.id, s.name]));
      if (!services.has(id)) services.set(id, id); // a service removed since: its id, once
    }
    return services.get(id) ?? id;
  }

  function releaseView(id) {
    const { view, heading } = frame("Release", link("#/releases", "← Releases", "back"));
    const summary = region(view, "", "release-summary");
    const actions = h("div", { class: "actions", role: "group", "aria-label": "Release actions" });
    view.append(actions);
    const tasks = region(view, "Tasks per service", "tasks");
    const timeline = region(view, "Event timeline", "timeline");
    const events = [];
    let lastState = null;
    return {
      heading,
      async refresh() {
        const [release, taskPage] = await Promise.all([
          call("GET", `releases/${q(id)}`),
          call("GET", `releases/${q(id)}/tasks?limit=${PAGE}`),
        ]);
        for (;;) { // the events since the last round, oldest first
          const page = await call("GET", `events?release_id=${q(id)}&limit=${PAGE}&offset=${events.length}`);
          events.push(...page.items);
          if (page.next_offset === null || !page.items.length) break;
        }
        const names = await Promise.all(taskPage.items.map((t) => serviceName(t.task_service_id)));
        heading.textContent = `Release ${release.name}`;
        document.title = `${release.name} · release-coordinator`;
        if (lastState !== null && lastState !== release.state) {
          announce(`Release ${release.name} is ${release.state}`);
        }
        lastState = release.state;
        draw(summary, release, () => facts([
          ["State", badge(release.state)],
          ["Version", release.version],
          ["Id", h("code", {}, release.id)],
          ["Author", release.author],
          ["Created", time(release.created_at)],
          ["State since", time(release.state_changed_at)],
          ["Studies", release.studies.length ? `${release.studies.length}: ${release.studies.slice(0, 8).join(", ")}${release.studies.length > 8 ? ", …" : ""}` : ""],
          ["Tags", release.tags.join(", ")],
          ["Publishes", release.gates.publish_at
            ? h("span", {}, "by itself at ", time(release.gates.publish_at))
            : release.auto_publish ? "by itself once staged" : "when an operator publishes it"],
          ["Approvals", release.gates.required_approvals
            ? `${release.gates.approvals.length} of ${release.gates.required_approvals}${release.gates.approvals.length ? ": " + release.gates.approvals.map((a) => a.by).join(", ") : ""}`
            : ""],
          ["Checks", release.gates.checks.map((c) => {
            const r = release.gates.results.find((x) => x.webhook_id === c);
            return `${c}: ${r ? r.result + (r.message ? ` (${r.message})` : "") : "not asked yet"}`;
          }).join("; ")],
          ["Waits", release.publish_gate ? h("span", { class: "gate" }, release.publish_gate) : ""],
          ["Major", release.is_major ? "yes" : ""],
          ["Description", release.description],
          ["Failure", release.failure ? h("span", { class: "failure" }, release.failure) : ""],
          ["Runs again", release.cloned_from ? link(`#/releases/${q(release.cloned_from)}`, release.cloned_from) : ""],
        ]));
        draw(actions, [release.state, release.gates.approvals.length], () => [
          !FINAL.has(release.state) && release.gates.required_approvals > release.gates.approvals.length ? actionButton({
            label: "Approve",
            path: `releases/${q(id)}/approve`,
            done: (r) => `Release ${r.name} approved (${r.gates.approvals.length} of ${r.gates.required_approvals})`,
          }) : null,
          release.state === "staged" ? actionButton({
            label: "Publish",
            path: `releases/${q(id)}/publish`,
            done: (r) => `Release ${r.name} is ${r.state}`,
          }) : null,
          !FINAL.has(release.state) && release.state !== "canceling" ? actionButton({
            label: "Cancel release",
            path: `releases/${q(id)}/cancel`,
            confirm: "Confirm cancel",
            reason: true,
            done: (r) => `Release ${r.name} is ${r.state}`,
          }) : null,
          FINAL.has(release.state) ? actionButton({
            label: "Run again",
            path: `releases/${q(id)}/run-again`,
            done: (r) => `Release ${r.name} created again, as ${r.id}`,
            onDone: (r) => { location.hash = `#/releases/${q(r.id)}`; },
          }) : null,
        ]);
        const rows = taskPage.items.map((t, i) => ({ ...t, service: names[i] }));
        rows.sort((a, b) => a.service.localeCompare(b.service));
        draw(tasks, rows, () => table(
          { text: "The release's task on each task service", hidden: true },
          ["Service", "State", "Progress", "Message", "Updated"],
          rows.map((t) => [
            t.service,
            badge(t.state),
            h("span", { class: "progress" },
              h("progress", { max: 100, value: t.progress, "aria-label": `${t.service}: ${t.progress}%` }),
              ` ${t.progress}%`),
            t.message,
            time(t.updated_at),
          ]),
          "No task yet.",
        ));
        draw(timeline, events.length, () => events.length
          ? h("ol", { class: "timeline", reversed: true, "aria-label": "Events, newest first" },
            [...events].reverse().map((e) => h("li", { class: `event event-${e.type}` },
              h("time", { datetime: e.at }, clock(e.at)), " ",
              h("span", { class: `badge type-${e.type}` }, e.type), " ",
              h("span", { class: "kind" }, e.kind.replaceAll("_", " ")),
              e.task_service_id ? h("span", { class: "service" }, services.get(e.task_service_id) ?? "") : null,
              " ", e.message)))
          : h("p", { class: "empty" }, "No event yet."));
      },
    };
  }

  function rolloutsView() {
    const { view, heading } = frame("Rollouts");
    const list = region(view, "", "rollouts");
    return {
      heading,
      async refresh() {
        const items = await all("rollouts", 2);
        draw(list, items, () => table(
          { text: "Rollouts, by priority then creation", hidden: true },
          ["Name", "Id", "State", "Policy", "Match", "Priority"],
          items.map((r) => [
            link(`#/rollouts/${q(r.id)}`, r.name || r.id, `rollout:${r.id}`),
            h("code", {}, r.id),
            badge(r.state),
            r.policy.type.replaceAll("_", " ") + (r.gated ? " (gated by the parent)" : ""),
            r.match,
            r.priority,
          ]),
          "No rollout yet. Upload a bundle with POST /rollouts.",
        ));
      },
    };
  }

  // The map's classes of a child: its status in the rollout, or not in it.
  const CLASSES = [
    ["none", "not in this rollout"],
    ["No", "not offered"],
    ["Todo", "offered, not fetched yet"],
    ["Doing", "running"],
    ["Done", "done"],
    ["Failed", "failed or rolled back"],
  ];
  const STAGE_STATUSES = ["Pending", "InProgress", "SuccessWaiting", "ShouldEnd", "Completed", "Failure", "Error"];

  function rolloutView(id) {
    const { view, heading } = frame("Rollout", link("#/rollouts", "← Rollouts", "back"));
    const summary = region(view, "", "rollout-summary");
    const actions = h("div", { class: "actions", role: "group", "aria-label": "Rollout actions" });
    view.append(actions);
    const stages = region(view, "Stages", "stages");
    const metrics = region(view, "Aggregated metrics per stage", "metrics");
    const map = region(view, "Map", "map");
    const children = region(view, "Children", "children");
    let areas = new Map(); // child id -> GeoJSON area
    let areasAt = 0;
    let lastState = null;
    return {
      heading,
      async refresh() {
        const [status, rows] = await Promise.all([
          call("GET", `rollouts/${q(id)}/status`),
          all(`rollouts/${q(id)}/children`),
        ]);
        if (rows.some((r) => !areas.has(r.child_id)) || Date.now() - areasAt > 30000) {
          areas = new Map((await all("children")).map((c) => [c.id, c]));
          areasAt = Date.now();
        }
        const rollout = status.rollout;
        heading.textContent = `Rollout ${rollout.name || rollout.id}`;
        document.title = `${rollout.name || rollout.id} · release-coordinator`;
        if (lastState !== null && lastState !== rollout.state) {
          announce(`Rollout ${rollout.name || rollout.id} is ${rollout.state}`);
        }
        lastState = rollout.state;
        const counts = (o) => Object.entries(o).map(([k, v]) => `${k.replaceAll("_", " ")} ${v}`).join(", ");
        draw(summary, status, () => facts([
          ["State", badge(rollout.state)],
          ["Id", h("code", {}, rollout.id)],
          ["Reason", rollout.reason],
          ["Policy", policyText(rollout.policy)],
          ["Match", rollout.match],
          ["Priority", rollout.priority],
          ["Gated", rollout.gated ? "yes: its stages end when its parent's do" : ""],
          ["Waits for", rollout.after_release
            ? `data release ${rollout.after_release} (starts when it is published)` : ""],
          ["Children", String(status.children)],
          ["Statuses", counts(status.statuses)],
          ["Outcomes", counts(status.outcomes)],
          ["Lost", status.lost.join(", ")],
          ["Approvals", (status.approvals ?? [])
            .map((a) => `${a.stage} ${a.approved ? "approved" : "waits for approval"}`).join(", ")],
        ]));
        const name = rollout.name || rollout.id;
        const done = (r) => `Rollout ${r.name || r.id} is ${r.state}`;
        // A WaitForSignal stage with children waiting can be ended now by the operator.
        const promotable = rollout.state === "active" && !rollout.gated
          ? status.stages.filter((st) => (st.counts.SuccessWaiting ?? 0) > 0).map((st) => st.name)
          : [];
        // A stage the policy holds for an operator's approval (an admin's action).
        const approvable = ["draft", "active", "paused"].includes(rollout.state) && !rollout.gated
          ? (status.approvals ?? []).filter((a) => !a.approved).map((a) => a.stage)
          : [];
        draw(actions, [rollout.state, promotable, approvable], () => [
          ...approvable.map((stage) => actionButton({
            label: `Approve ${stage}`,
            path: `rollouts/${q(id)}/stages/${q(stage)}/approve`,
            confirm: `Confirm: children of ${name} may start stage ${stage}`,
            done: () => `Stage ${stage} of ${name} approved`,
          })),
          ...promotable.map((stage) => actionButton({
            label: `Promote ${stage}`,
            path: `rollouts/${q(id)}/stages/${q(stage)}/promote`,
            confirm: `Confirm: end stage ${stage} of ${name} now, whatever its barrier`,
            done: () => `Stage ${stage} of ${name} promoted`,
          })),
          rollout.state === "draft" ? actionButton({ label: "Start", path: `rollouts/${q(id)}/start`, done }) : null,
          rollout.state === "active" ? actionButton({ label: "Pause", path: `rollouts/${q(id)}/pause`, done }) : null,
          rollout.state === "paused" ? actionButton({ label: "Resume", path: `rollouts/${q(id)}/resume`, done }) : null,
          // Children that failed or timed out get another go (a completed rollout runs again).
          ["active", "paused", "completed"].includes(rollout.state) && (status.statuses.Failed ?? 0) > 0
            ? actionButton({
              label: "Retry failed",
              path: `rollouts/${q(id)}/retry`,
              confirm: `Confirm: offer ${name} again to its children that failed or timed out`,
              done: (r) => `${name}: offered again to ${r.retried.length} children`,
            }) : null,
          ["draft", "active", "paused"].includes(rollout.state) ? actionButton({
            label: "Abort",
            path: `rollouts/${q(id)}/abort`,
            confirm: `Confirm abort of ${name}`,
            reason: true,
            done,
          }) : null,
        ]);
        draw(stages, status.stages.map((st) => [st.name, st.counts]), () => table(
          { text: "Children per stage status", hidden: true },
          ["Stage", ...STAGE_STATUSES],
          status.stages.map((st) => [st.name, ...STAGE_STATUSES.map((k) => String(st.counts[k] ?? 0))]),
          "No stage.",
        ));
        draw(metrics, status.stages.map((st) => [st.name, st.aggregate, st.judgement]), () => metricsTable(status.stages));
        const childRows = rows.map((r) => ({ ...r, area: areas.get(r.child_id)?.area ?? null }));
        draw(map, [rollout.target, childRows.map((r) => [r.child_id, r.status, r.outcome, r.lost, r.area]), [...areas.keys()]],
          () => drawMap(rollout, childRows, areas));
        // A child can be excluded unless it finished (Done) or is excluded, or the rollout aborted.
        const excludable = (r) => rollout.state !== "aborted" && r.status !== "Done" && r.outcome !== "excluded";
        draw(children, [rows, rollout.state], () => table(
          { text: "Children of the rollout (the map's text alternative)", hidden: false },
          ["Child", "Status", "Outcome", "Lost", "Stages", "Action"],
          rows.map((r) => [
            h("code", {}, r.child_id),
            badge(r.status, statusLabel(r.status)),
            r.outcome.replaceAll("_", " "),
            r.lost ? "lost" : "",
            Object.entries(r.stages).map(([n, st]) => `${n}: ${st.status}`).join(", "),
            excludable(r) ? actionButton({
              label: `Exclude ${r.child_id}`,
              path: `rollouts/${q(id)}/children/${q(r.child_id)}/exclude`,
              confirm: `Confirm: exclude ${r.child_id} from ${name} (it is never offered it again)`,
              reason: true,
              done: (c) => `Child ${c.child_id} excluded from ${name}`,
            }) : "",
          ]),
          "No child takes part in this rollout yet.",
        ));
      },
    };
  }

  const statusLabel = (status) => (CLASSES.find(([k]) => k === status) || [status, status])[1];

  function policyText(policy) {
    const parts = [policy.type.replaceAll("_", " ")];
    if (policy.quorum !== undefined) parts.push(`quorum ${policy.quorum}`);
    if (policy.barrier_timeout) parts.push(`barrier time-out ${policy.barrier_timeout} s`);
    if (policy.child_timeout) parts.push(`child time-out ${policy.child_timeout} s`);
    if (policy.groups) parts.push(`${policy.groups.length} groups`);
    if (policy.waves) parts.push(`waves ${policy.waves.join(", ")}`);
    return parts.join(", ");
  }

  function metricsTable(stageList) {
    const ms = (t) => (t && t.Median !== null ? `${fmt(t.Median)} ms (${fmt(t.Minimum)}–${fmt(t.Maximum)})` : "–");
    const rate = (r) => (r === null || r === undefined ? "–" : `${fmt(r * 100)} %`);
    const rows = stageList.filter((st) => st.aggregate);
    return table(
      { text: "Call-weighted aggregates of the children's summaries: median (minimum–maximum)", hidden: false },
      ["Stage", "Proxy time", "F1 time", "F2 time", "F1 errors", "F2 errors", "F1 calls", "F2 calls", "Judgement"],
      rows.map((st) => {
        const a = st.aggregate;
        return [st.name, ms(a.ProxyTimes), ms(a.F1TimesSummary), ms(a.F2TimesSummary),
          rate(a.F1ErrRate), rate(a.F2ErrRate), String(a.f1_calls), String(a.f2_calls), judgementText(st.judgement)];
      }),
      "No summary reported yet.",
    );
  }

  // The stage's canary judgement (the policy's judgement): its verdict and why; by child, the
  // children's verdicts and the failing ones.
  function judgementText(j) {
    if (!j) return "–";
    const text = `${j.verdict}: ${j.reason}`;
    const counts = Object.entries(j.children).map(([k, n]) => `${n} ${k}`).join(", ");
    const failing = j.failing.map((f) => `${f.child_id} (${f.reason})`).join("; ");
    return [text, counts && `children: ${counts}`, failing && `failing: ${failing}`].filter(Boolean).join(" — ");
  }

  function fmt(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: 2 });
  }

  // -- the map --------------------------------------------------------------------------------

  function polygons(area) {
    // A GeoJSON Polygon, MultiPolygon or Feature of one: a list of polygons (lists of rings).
    if (!area) return [];
    if (area.type === "Feature") return polygons(area.geometry);
    if (area.type === "Polygon") return [area.coordinates];
    if (area.type === "MultiPolygon") return area.coordinates;
    return [];
  }

  function bounds(polys, box = [Infinity, Infinity, -Infinity, -Infinity]) {
    for (const poly of polys) {
      for (const ring of poly) {
        for (const [lon, lat] of ring) {
          box[0] = Math.min(box[0], lon);
          box[1] = Math.min(box[1], lat);
          box[2] = Math.max(box[2], lon);
          box[3] = Math.max(box[3], lat);
        }
      }
    }
    return box;
  }

  const overlaps = (a, b) => a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3];

  function drawMap(rollout, rows, registered) {
    const target = polygons(rollout.target);
    const box = bounds(target);
    for (const row of rows) bounds(polygons(row.area), box);
    if (!Number.isFinite(box[0])) return h("p", { class: "empty" }, "No area to draw.");
    const inRollout = new Set(rows.map((r) => r.child_id));
    const others = [...registered.values()]
      .filter((c) => !inRollout.has(c.id) && overlaps(bounds(polygons(c.area)), box))
      .map((c) => ({ child_id: c.id, status: "none", outcome: "", lost: c.lost, area: c.area }));
    // An equirectangular projection, longitudes shrunk by the cosine of the middle latitude.
    const [minLon, minLat, maxLon, maxLat] = box;
    const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180) || 1;
    const spanX = Math.max((maxLon - minLon) * kx, 1e-9);
    const spanY = Math.max(maxLat - minLat, 1e-9);
    const width = 720;
    const pad = 16;
    let fit = (width - 2 * pad) / spanX;
    if (spanY * fit + 2 * pad > 720) fit = (720 - 2 * pad) / spanY;
    const height = Math.max(spanY * fit + 2 * pad, 160);
    const ox = (width - spanX * fit) / 2;
    const oy = (height - spanY * fit) / 2;
    const point = ([lon, lat]) =>
      `${(ox + (lon - minLon) * kx * fit).toFixed(1)},${(oy + (maxLat - lat) * fit).toFixed(1)}`;
    const path = (polys) => polys
      .map((poly) => poly.map((ring) => `M${ring.map(point).join("L")}Z`).join(""))
      .join("");
    const title = `Map of rollout ${rollout.name || rollout.id}`;
    const tally = new Map(CLASSES.map(([k]) => [k, 0]));
    for (const r of [...rows, ...others]) tally.set(r.status, (tally.get(r.status) ?? 0) + 1);
    const svg = s("svg", {
      viewBox: `0 0 ${width} ${Math.round(height)}`,
      role: "img",
      "aria-labelledby": "rollout-map-title",
      "aria-describedby": "rollout-map-desc",
      class: "map",
      id: "rollout-map",
    },
    s("title", { id: "rollout-map-title" }, title),
    s("desc", { id: "rollout-map-desc" },
      `The target and ${rows.length} children, coloured by status: ` +
      CLASSES.filter(([k]) => tally.get(k)).map(([k, label]) => `${tally.get(k)} ${label}`).join(", ") +
      ". The table of children below says the same."),
    s("path", { d: path(target), class: "target", "fill-rule": "evenodd" }),
    [...others, ...rows].map((r) => s("path", {
      d: path(polygons(r.area)),
      class: `child status-${r.status}${r.lost ? " lost" : ""}`,
      "fill-rule": "evenodd",
      "data-child": r.child_id,
      "data-status": r.status,
    }, s("title", {}, `${r.child_id}: ${statusLabel(r.status)}${r.outcome ? `, ${r.outcome.replaceAll("_", " ")}` : ""}${r.lost ? ", lost" : ""}`))),
    );
    const legend = h("ul", { class: "legend", "aria-label": "Legend" },
      h("li", {}, h("span", { class: "swatch target", "aria-hidden": "true" }), "target"),
      CLASSES.map(([k, label]) => h("li", { "data-status": k },
        h("span", { class: `swatch status-${k}`, "aria-hidden": "true" }), `${label} (${tally.get(k)})`)),
      h("li", {}, h("span", { class: "swatch lost", "aria-hidden": "true" }), "dashed: lost"));
    return h("figure", { class: "map-figure" }, svg, legend,
      h("figcaption", {}, "Children drawn from their GeoJSON areas; hover one for its id. ",
        "The children table below is the text alternative."));
  }

  // -- login, routing, polling ----------------------------------------------------------------

  function handleAuth(error) {
    if (error.status !== 401) return false;
    const had = Boolean(token);
    logout();
    showProblem(had ? "The server refused the token: log in again." : "Log in with an operator token.");
    return true;
  }

  function logout() {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    stop();
    $("view").replaceChildren();
    $("nav").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("token").value = "";
    $("token").focus();
  }

  function stop() {
    clearTimeout(timer);
    timer = 0;
    current = null;
  }

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [section, ...rest] = hash.split("/");
    const id = rest.length ? decodeURIComponent(rest.join("/")) : "";
    if (section === "rollouts") return { section, key: hash, make: () => (id ? rolloutView(id) : rolloutsView()) };
    return { section: "releases", key: hash || "releases", make: () => (section === "releases" && id ? releaseView(id) : releasesView()) };
  }

  function show() {
    stop();
    clearProblem();
    const { section, key, make } = route();
    for (const a of document.querySelectorAll("#nav a[data-section]")) {
      if (a.dataset.section === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    $("login").hidden = true;
    $("nav").hidden = false;
    $("session").hidden = false;
    $("logout").hidden = !token;
    const view = make();
    let failing = false;
    let running = false;
    let again = false;
    const me = {
      key,
      async refresh() {
        if (current !== me) return;
        if (running) { // one round at a time: the next starts when this one ends
          again = true;
          return;
        }
        running = true;
        document.documentElement.dataset.refreshing = "true"; // (what a test can wait for)
        clearTimeout(timer);
        try {
          await view.refresh();
          if (failing) clearProblem();
          failing = false;
          $("live-state").textContent = "Live";
          $("updated").textContent = `Last update ${new Date().toLocaleTimeString()}.`;
        } catch (error) {
          if (current !== me || handleAuth(error)) return;
          failing = true;
          $("live-state").textContent = "Updates failing";
          showProblem(error.status === 404 ? `Not found: ${error.message}` : `Updates failed: ${error.message}`);
        } finally {
          running = false;
          document.documentElement.dataset.refreshing = "false";
        }
        if (current !== me) return;
        if (again) {
          again = false;
          me.refresh();
        } else {
          timer = setTimeout(() => me.refresh(), POLL_MS);
        }
      },
    };
    current = me;
    view.heading.focus();
    me.refresh();
  }

  async function login(event) {
    event.preventDefault();
    const input = $("token");
    const candidate = input.value.trim();
    input.value = "";
    if (!candidate) return;
    token = candidate;
    try {
      await call("GET", "releases?limit=1");
    } catch (error) {
      token = "";
      showProblem(error.status === 401 ? "The server refused this token." : `Cannot log in: ${error.message}`);
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    announce("Logged in");
    show();
  }

  async function start() {
    const docs = meta("rc-docs");
    if (docs) $("docs-link").href = docs;
    else $("docs-link").parentElement.remove();
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => {
      logout();
      announce("Logged out");
    });
    $("problem-close").addEventListener("click", clearProblem);
    window.addEventListener("hashchange", () => {
      if (current || token) show();
    });
    if (token) {
      show();
      return;
    }
    try { // a server that runs --allow-anonymous needs no token
      await call("GET", "releases?limit=1");
      show();
    } catch (error) {
      if (error.status === 401) logout();
      else showProblem(`The server cannot be reached: ${error.message}`);
    }
  }

  start();
})();
