// The cohort web page. It loads the state once (/v1/status, /v1/members,
// /v1/leaders, /v1/issues), then lives on the /v1/events stream: every
// event updates the part it is about. It never polls the whole state; it
// loads it again only when the stream was cut or fell behind (`lagged`).
// See docs/web-ui.md.
"use strict";

(() => {
  const FEED_MAX = 200;
  const SHOWN_MAX = 1000;
  const TOKEN_KEY = "cohort-token";
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const collator = new Intl.Collator(undefined, { numeric: true });
  const MEMBER_KINDS = new Set([
    "member-joined", "member-status", "member-address", "member-payload", "member-incarnation",
  ]);

  // What tests and the bench read (through the DevTools protocol).
  const ui = (window.cohortUi = {
    stats: { loads: 0, requests: 0, loadBytes: 0, streams: 0, streamBytes: 0, events: 0, kinds: {} },
    // performance.now() when the first full load was on screen, and its rows.
    firstRender: null,
    firstRenderRows: 0,
    // Member status changes as they reached the screen.
    shown: [],
  });

  const state = {
    status: null,
    members: new Map(), // uuid -> MemberInfo
    leaders: null,
    issues: null, // the /v1/issues answer, or null
    issuesNote: "",
  };
  const rows = new Map(); // uuid -> <tr>

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  const $ = (id) => document.getElementById(id);
  const decoder = new TextDecoder();

  class Unauthorized extends Error {}

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function headers() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // GET path as JSON: {status, body}; throws on 401 and network errors.
  async function getJson(path) {
    ui.stats.requests++;
    const res = await fetch(path, { headers: headers(), cache: "no-store" });
    if (res.status === 401) throw new Unauthorized(path);
    const bytes = await res.arrayBuffer();
    ui.stats.loadBytes += bytes.byteLength;
    let body = null;
    try {
      body = JSON.parse(decoder.decode(bytes));
    } catch (_) {
      body = null;
    }
    return { status: res.status, body };
  }

  function required(answer, path) {
    if (answer.status !== 200 || !answer.body) {
      const why = answer.body && answer.body.message ? `: ${answer.body.message}` : "";
      throw new Error(`${path}: HTTP ${answer.status}${why}`);
    }
    return answer.body;
  }

  async function loadIssues() {
    issuesHeld = [];
    try {
      const answer = await getJson("/v1/issues");
      if (answer.status === 404) {
        setIssues(null, "This agent does not report issues (no /v1/issues).");
      } else if (answer.status !== 200 || !answer.body) {
        setIssues(null, `Issues unavailable: HTTP ${answer.status}`);
      } else {
        setIssues(answer.body, "");
      }
    } finally {
      const held = issuesHeld;
      issuesHeld = null;
      held.forEach(applyIssue);
    }
  }

  // The whole state, once.
  async function fullLoad() {
    const [status, members, leaders] = await Promise.all([
      getJson("/v1/status"),
      getJson("/v1/members"),
      getJson("/v1/leaders"),
      loadIssues(),
    ]);
    state.status = required(status, "/v1/status");
    const list = required(members, "/v1/members").members || [];
    // 503 before the Raft driver runs: no group yet.
    state.leaders = leaders.status === 200 ? leaders.body : state.status.raft || null;
    state.members = new Map(list.map((m) => [m.uuid, m]));
    ui.stats.loads++;
    renderAll();
    if (ui.firstRender === null) {
      ui.firstRender = performance.now();
      ui.firstRenderRows = rows.size;
      performance.mark("cohort-first-render");
    }
  }

  // ---- live updates ---------------------------------------------------

  // Events that arrive while a full load runs wait for it, then apply.
  let held = null;
  let loadAgain = false;

  async function reload() {
    if (held) {
      loadAgain = true;
      return;
    }
    do {
      loadAgain = false;
      held = [];
      try {
        await fullLoad();
      } finally {
        const waiting = held;
        held = null;
        waiting.forEach(apply);
      }
    } while (loadAgain);
  }

  function onEvent(event) {
    if (held) held.push(event);
    else apply(event);
  }

  let failLive = () => {};

  function apply(event) {
    ui.stats.events++;
    ui.stats.kinds[event.kind] = (ui.stats.kinds[event.kind] || 0) + 1;
    addToFeed(event);
    const kind = event.kind;
    if (MEMBER_KINDS.has(kind)) {
      if (event.member) upsertMember(event.member, event);
      else reloadSoon(); // an agent older than this page
    } else if (kind === "member-forgotten") {
      removeMember(event.uuid);
    } else if (kind === "leader-changed" || kind === "master-changed") {
      if (event.raft) {
        state.leaders = event.raft;
        renderHeader();
        renderSetsSoon();
      }
    } else if (kind === "apply-committed" || kind === "apply-aborted") {
      if (event.apply && state.status) {
        state.status.apply = event.apply;
        state.status.config_version = event.apply.version || null;
        renderHeader();
      }
    } else if (kind === "issue-raised" || kind === "issue-cleared") {
      onIssueEvent(event);
    } else if (kind === "lagged") {
      reload().catch(failLive);
    } else if (kind === "agent-stopping") {
      setConn("stopping", `the agent is stopping (${event.detail})`);
    }
  }

  let reloadTimer = null;
  function reloadSoon() {
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      reload().catch(failLive);
    }, 1000);
  }

  // Reads server-sent events from a fetch body: `data:` lines up to a
  // blank line make one event; `:` lines are keep-alives.
  async function readEvents(body) {
    const reader = body.getReader();
    const text = new TextDecoder();
    let buffer = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      ui.stats.streamBytes += value.byteLength;
      buffer += text.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) dispatch(data.join("\n"));
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        // `event:` repeats the JSON's kind; `id:` and `retry:` are unused.
        if (field === "data") data.push(value);
      }
    }
  }

  function dispatch(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch (_) {
      return;
    }
    onEvent(event);
  }

  // One connection: subscribe first, then load, so no change falls
  // between the load and the stream.
  async function session() {
    const abort = new AbortController();
    let failure = null;
    const fail = (e) => {
      failure = failure || e;
      abort.abort();
    };
    failLive = fail;
    ui.stats.requests++;
    const res = await fetch("/v1/events", {
      headers: headers(),
      cache: "no-store",
      signal: abort.signal,
    });
    if (res.status === 401) throw new Unauthorized("/v1/events");
    if (!res.ok || !res.body) throw new Error(`/v1/events: HTTP ${res.status}`);
    ui.stats.streams++;
    let ended = false;
    const reading = readEvents(res.body);
    reload().then(() => ended || setConn("live", "live"), fail);
    try {
      await reading;
    } catch (e) {
      throw failure || e;
    } finally {
      ended = true;
    }
    if (failure) throw failure;
  }

  async function run() {
    let backoff = BACKOFF_FIRST_MS;
    for (;;) {
      const started = performance.now();
      try {
        await session();
        setConn("down", "the event stream ended");
      } catch (e) {
        if (e instanceof Unauthorized) {
          await askToken(token ? "That token was refused." : "");
          backoff = BACKOFF_FIRST_MS;
          continue;
        }
        setConn("down", e && e.message ? e.message : String(e));
      }
      // A stream that lived a while was healthy: start over from the shortest pause.
      if (performance.now() - started > 30000) backoff = BACKOFF_FIRST_MS;
      const pause = backoff * (0.5 + Math.random() / 2);
      setConn("down", `${$("conn").textContent}; reconnecting in ${(pause / 1000).toFixed(1)} s`);
      await new Promise((resolve) => setTimeout(resolve, pause));
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      setConn("connecting", "reconnecting");
      addToFeed({ at_ms: Date.now(), kind: "page", subject: "", detail: "reconnecting; the state is loaded again" });
    }
  }

  function setConn(which, text) {
    const conn = $("conn");
    conn.dataset.state = which;
    conn.textContent = text;
    document.body.classList.toggle("stale", which !== "live");
  }

  function askToken(note) {
    setConn("auth", "a token is needed");
    const dialog = $("auth");
    $("auth-note").textContent = note;
    $("auth-token").value = "";
    return new Promise((resolve) => {
      $("auth-form").onsubmit = (e) => {
        e.preventDefault();
        token = $("auth-token").value.trim();
        sessionStorage.setItem(TOKEN_KEY, token);
        dialog.close();
        resolve();
      };
      if (!dialog.open) dialog.showModal();
    });
  }

  // ---- members ---------------------------------------------------------

  function upsertMember(member, event) {
    const before = state.members.get(member.uuid);
    state.members.set(member.uuid, member);
    let tr = rows.get(member.uuid);
    if (!tr || (before && before.name !== member.name)) {
      if (tr) tr.remove();
      tr = el("tr");
      rows.set(member.uuid, tr);
      fillRow(tr, member);
      insertSorted(tr, member.name);
    } else {
      fillRow(tr, member);
    }
    if (!before || before.status !== member.status) {
      ui.shown.push({
        name: member.name,
        status: member.status,
        at_ms: event ? event.at_ms : null,
        shown_ms: performance.timeOrigin + performance.now(),
      });
      if (ui.shown.length > SHOWN_MAX) ui.shown.shift();
    }
    renderCounts();
    renderSetsSoon();
  }

  function removeMember(uuid) {
    state.members.delete(uuid);
    const tr = rows.get(uuid);
    if (tr) tr.remove();
    rows.delete(uuid);
    renderCounts();
    renderSetsSoon();
  }

  function insertSorted(tr, name) {
    const body = $("members").tBodies[0];
    for (const other of body.rows) {
      if (collator.compare(other.dataset.name, name) > 0) {
        body.insertBefore(tr, other);
        return;
      }
    }
    body.appendChild(tr);
  }

  function fillRow(tr, m) {
    tr.dataset.name = m.name;
    tr.dataset.status = m.status;
    tr.dataset.uuid = m.uuid;
    const self = state.status && m.uuid === state.status.uuid;
    const name = el("td", "name", m.name);
    name.title = m.uuid;
    if (self) name.appendChild(el("span", "badge", "this node"));
    const status = el("td");
    status.appendChild(el("span", `pill status-${m.status}`, m.status));
    const since = el("td", "since", ago(m.since_ms));
    since.dataset.ms = m.since_ms;
    since.title = new Date(m.since_ms).toISOString();
    tr.replaceChildren(
      name,
      status,
      el("td", "mono", m.address),
      el("td", null, m.replicaset || "-"),
      el("td", null, (m.roles || []).join(", ") || "-"),
      since,
    );
  }

  function renderMembers() {
    const body = $("members").tBodies[0];
    rows.clear();
    const sorted = [...state.members.values()].sort((a, b) => collator.compare(a.name, b.name));
    const fragment = document.createDocumentFragment();
    for (const m of sorted) {
      const tr = el("tr");
      fillRow(tr, m);
      rows.set(m.uuid, tr);
      fragment.appendChild(tr);
    }
    body.replaceChildren(fragment);
    renderCounts();
  }

  function renderCounts() {
    const counts = {};
    for (const m of state.members.values()) counts[m.status] = (counts[m.status] || 0) + 1;
    const parts = Object.keys(counts)
      .sort()
      .map((s) => `${counts[s]} ${s}`);
    $("members-count").textContent = `${state.members.size}: ${parts.join(", ")}`;
  }

  function ago(ms) {
    if (!ms) return "-";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  }

  // Relative times age on screen; nothing is fetched for it.
  setInterval(() => {
    for (const td of document.querySelectorAll("td.since")) td.textContent = ago(Number(td.dataset.ms));
  }, 10000);

  // ---- header and replica sets ------------------------------------------

  function renderHeader() {
    const s = state.status;
    if (!s) return;
    const l = state.leaders;
    $("cluster").textContent = s.cluster;
    document.title = `cohort ${s.cluster} - ${s.node}`;
    $("node").textContent = `${s.node} (cohort ${s.version})`;
    $("leader").textContent = l && l.leader ? l.leader.name || l.leader.id : "none";
    $("term").textContent = l ? String(l.term) : "-";
    $("failover").textContent = l && l.failover_mode ? l.failover_mode : "-";
    const apply = s.apply;
    const config = $("config");
    if (apply && apply.version > 0) {
      config.textContent = `version ${apply.version} · ${apply.hash.slice(0, 12)}`;
      config.title = `SHA-256 ${apply.hash}\n2PC lock: ${apply.lock}`;
    } else {
      config.textContent = s.config_version ? `version ${s.config_version}` : "none committed";
      config.title = apply ? `2PC lock: ${apply.lock}` : "";
    }
  }

  // Once for a whole chunk of events (a burst of 100 payload changes
  // redraws the cards once), before the next paint.
  let setsQueued = false;
  function renderSetsSoon() {
    if (setsQueued) return;
    setsQueued = true;
    queueMicrotask(() => {
      setsQueued = false;
      renderSets();
    });
  }

  function renderSets() {
    const masters = (state.leaders && state.leaders.masters) || {};
    const sets = new Map();
    const set = (name) => {
      if (!sets.has(name)) sets.set(name, { nodes: [], roles: new Set() });
      return sets.get(name);
    };
    for (const m of state.members.values()) {
      if (!m.replicaset) continue;
      const s = set(m.replicaset);
      s.nodes.push(m);
      for (const r of m.roles || []) s.roles.add(r);
    }
    for (const name of Object.keys(masters)) set(name);
    const names = [...sets.keys()].sort(collator.compare);
    const fragment = document.createDocumentFragment();
    for (const name of names) {
      const s = sets.get(name);
      const master = masters[name];
      const card = el("div", "set");
      card.dataset.set = name;
      card.appendChild(el("h3", null, name));
      const who = el("p", "master");
      if (master) {
        who.append("master ", el("strong", null, master.node), ` · generation ${master.generation}`);
        if (master.reason) who.title = master.reason;
      } else {
        who.textContent = "no master";
        who.classList.add("warn");
      }
      card.appendChild(who);
      card.appendChild(el("p", "roles", [...s.roles].sort().join(", ") || "no roles"));
      const list = el("ul", "nodes");
      s.nodes.sort((a, b) => collator.compare(a.name, b.name));
      for (const m of s.nodes) {
        const li = el("li", `status-${m.status}`);
        li.append(el("span", "dot"), m.name);
        if (master && master.node === m.name) li.appendChild(el("span", "badge", "master"));
        li.title = m.status;
        list.appendChild(li);
      }
      card.appendChild(list);
      fragment.appendChild(card);
    }
    $("sets").replaceChildren(fragment);
    $("sets-count").textContent = String(names.length);
  }

  // ---- issues -------------------------------------------------------------

  function setIssues(answer, note) {
    state.issues = answer;
    state.issuesNote = note;
    renderIssues();
  }

  // One entry per kind and subject, as /v1/issues merges them.
  const issueKey = (i) => `${i.kind}\u0000${i.subject}`;

  // This node's own issues come as events: applied at once. Issues only
  // other nodes see have no event here, so a change also has the merged
  // list fetched again: 2 s after the first event of a burst, then at most
  // every 15 s while events keep coming; nothing while nothing changes.
  const ISSUES_FIRST_MS = 2000;
  const ISSUES_EVERY_MS = 15000;
  let issuesTimer = null;
  let issuesFetched = -Infinity;
  // Issue events that arrive while the list is being fetched: applied
  // again on the answer, which may predate them.
  let issuesHeld = null;

  function onIssueEvent(event) {
    if (issuesHeld) issuesHeld.push(event);
    applyIssue(event);
    if (issuesTimer) return;
    const wait = Math.max(ISSUES_FIRST_MS, issuesFetched + ISSUES_EVERY_MS - performance.now());
    issuesTimer = setTimeout(() => {
      issuesTimer = null;
      issuesFetched = performance.now();
      loadIssues().catch(failLive);
    }, wait);
  }

  function applyIssue(event) {
    const issue = event.issue;
    if (!issue || typeof issue !== "object" || !issue.kind || !state.issues) return;
    const list = state.issues.issues || [];
    const at = list.findIndex((i) => issueKey(i) === issueKey(issue));
    const merged = at >= 0 ? list[at] : null;
    if (event.kind === "issue-raised") {
      if (!merged) {
        list.push({ ...issue, reported_by: [issue.node] });
      } else {
        const by = new Set(merged.reported_by || []);
        by.add(issue.node);
        merged.reported_by = [...by].sort(collator.compare);
        if (issue.level === "critical") merged.level = "critical";
        if (merged.node === issue.node) merged.message = issue.message;
      }
    } else if (merged) {
      merged.reported_by = (merged.reported_by || []).filter((n) => n !== issue.node);
      if (!merged.reported_by.length) list.splice(at, 1);
    }
    state.issues.issues = list;
    renderIssues();
  }

  function renderIssues() {
    const list = $("issues");
    const answer = state.issues;
    const issues = answer ? [...(answer.issues || [])] : [];
    const rank = (i) => (i.level === "critical" ? 0 : 1);
    issues.sort((a, b) => rank(a) - rank(b) || collator.compare(a.node || "", b.node || ""));
    const items = issues.map((i) => {
      const li = el("li", `issue level-${i.level}`);
      li.append(
        el("span", "pill", i.level),
        el("strong", null, i.node || "cluster"),
        el("span", "message", i.message),
        el("span", "since", i.since_ms ? ago(i.since_ms) : ""),
      );
      li.title = [i.kind, i.subject, i.reported_by && i.reported_by.length ? `reported by ${i.reported_by.join(", ")}` : ""]
        .filter(Boolean)
        .join(" · ");
      return li;
    });
    list.replaceChildren(...items);
    let note = state.issuesNote;
    if (answer) {
      if (!issues.length) note = "No issues.";
      if (answer.unanswered && answer.unanswered.length) {
        note += ` ${answer.nodes_answered} of ${answer.nodes_asked} nodes answered; no answer from ${answer.unanswered.join(", ")}.`;
      }
    }
    $("issues-note").textContent = note.trim();
    $("issues-count").textContent = answer ? String(issues.length) : "";
    $("issues-section").dataset.level = issues.some((i) => i.level === "critical")
      ? "critical"
      : issues.length
        ? "warning"
        : "ok";
  }

  // ---- event feed ---------------------------------------------------------

  function addToFeed(event) {
    const feed = $("feed");
    const li = el("li", `kind-${String(event.kind).split("-")[0]}`);
    const at = new Date(event.at_ms || Date.now());
    li.append(
      el("time", null, at.toLocaleTimeString(undefined, { hour12: false })),
      el("span", "kind", event.kind),
      el("span", "subject", event.subject),
      el("span", "detail", event.detail),
    );
    li.firstChild.dateTime = at.toISOString();
    feed.prepend(li);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  function renderAll() {
    renderHeader();
    renderMembers();
    renderSets();
    renderIssues();
  }

  run();
})();
