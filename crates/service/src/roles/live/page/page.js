// The meeting page: sign in, open a meeting, follow it live, drive it over the REST APIs.
//
// What a front end needs from the live role, in one place:
//  - POST /live/session with the bearer token sets the stream's cookie (EventSource cannot
//    send an Authorization header);
//  - new EventSource('/live/meetings/<id>') follows a meeting; the browser resumes by itself
//    with Last-Event-ID after a dropped connection, on whichever replica answers;
//  - `resync`: the id to resume from is gone; refetch over REST and follow from now;
//  - `reauth`: the credential is about to expire; renew the cookie and reconnect with
//    ?last_event_id= (a new EventSource does not send Last-Event-ID by itself).
"use strict";

const EVENT_TYPES = [
  "meeting.created", "agenda.item.added", "agenda.item.opened", "agenda.election.start",
  "election.opened", "election.nomination.accepted", "voting.ballot.opened",
  "voting.vote.counted", "voting.completed", "election.finalized",
  "permission.granted", "permission.revoked",
];

const $ = (id) => document.getElementById(id);

// Everything the page knows; tests read it through window.live.
const live = (window.live = {
  config: null, user: null, token: null, expiresAt: 0,
  lastEventId: null, log: [], duplicates: 0, connects: 0, resyncs: 0, reauths: 0,
  meeting: null,
});
const seen = new Set();
let source = null;
let loading = false;
let pending = [];

function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }
function setState(state, text) {
  const el = $("stream-state");
  el.dataset.state = state;
  el.textContent = text || state;
}

// An API's origin: the page's own (one Ingress), a full origin, or ":<port>" on this host.
function apiUrl(role, path) {
  const origin = live.config.api[role] || "";
  if (origin.startsWith(":")) return `${location.protocol}//${location.hostname}${origin}${path}`;
  return origin + path;
}

async function call(role, method, path, body) {
  const headers = { Authorization: "Bearer " + live.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(apiUrl(role, path), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${(json && json.message) || text}`);
  return json;
}

// --- Signing in, and renewing the stream's cookie ---------------------------------------

async function getToken() {
  if (live.config.development) {
    const r = await fetch("/live/dev-session", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: $("user").value.trim() }),
    });
    if (!r.ok) throw new Error("sign-in failed: " + r.status);
    return (await r.json()).token;
  }
  // Elsewhere the application's identity provider hands out tokens; here, the text box.
  return $("token").value.trim();
}

async function openSession() {
  live.token = await getToken();
  const r = await fetch("/live/session", {
    method: "POST", headers: { Authorization: "Bearer " + live.token },
  });
  if (!r.ok) throw new Error("the stream's cookie was refused: " + r.status + " " + (await r.text()));
  const view = await r.json();
  live.user = view.user;
  live.expiresAt = view.expires_at;
  $("who").textContent = `signed in as ${view.user}`;
}

// --- The meeting's state, built from a REST snapshot and then from events ---------------

function emptyMeeting(id) {
  return {
    id, title: "", managers: new Set(), agenda: new Map(), current: null,
    elections: new Map(), ballots: new Map(),
  };
}

async function snapshot(id) {
  const m = emptyMeeting(id);
  const meeting = await call("meeting", "GET", `/meetings/${encodeURIComponent(id)}`);
  m.title = meeting.title;
  m.current = meeting.current_item_id;
  meeting.managers.forEach((u) => m.managers.add(u));
  for (const item of meeting.agenda) {
    m.agenda.set(item.id, {
      id: item.id, position: item.position, title: item.title, kind: item.kind,
      status: item.status, result: item.result,
    });
  }
  const q = `?meeting_id=${encodeURIComponent(id)}`;
  for (const e of await call("election", "GET", `/elections${q}`)) {
    m.elections.set(e.id, {
      id: e.id, item: e.agenda_item_id, title: e.title, seats: e.seats, status: e.status,
      candidates: e.candidates.slice(), result: e.result,
    });
  }
  for (const b of await call("voting", "GET", `/ballots${q}`)) {
    m.ballots.set(b.id, {
      id: b.id, election: b.election_id, options: b.options, status: b.status,
      votes_cast: b.votes_cast, tally: b.tally,
    });
  }
  return m;
}

// Applying an event twice changes nothing, so events that arrive while the snapshot is
// fetched are simply applied after it.
function apply(m, type, d) {
  const item = m.agenda.get(d.agenda_item_id);
  switch (type) {
    case "meeting.created": m.title = d.title; break;
    case "agenda.item.added":
      if (!item) m.agenda.set(d.agenda_item_id, {
        id: d.agenda_item_id, position: d.position, title: d.title, kind: d.kind, status: "pending",
      });
      break;
    case "agenda.item.opened":
      if (d.previous_item_id && m.agenda.get(d.previous_item_id)) {
        const prev = m.agenda.get(d.previous_item_id);
        if (prev.kind !== "election") prev.status = "done";
      }
      if (item && item.status === "pending") item.status = "open";
      m.current = d.agenda_item_id;
      break;
    case "agenda.election.start": if (item && item.status === "open") item.status = "voting"; break;
    case "election.opened":
      if (!m.elections.has(d.election_id)) m.elections.set(d.election_id, {
        id: d.election_id, item: d.agenda_item_id, title: d.title, seats: d.seats, status: "nominating", candidates: [],
      });
      break;
    case "election.nomination.accepted": {
      const e = m.elections.get(d.election_id);
      if (e && !e.candidates.includes(d.candidate)) e.candidates.push(d.candidate);
      break;
    }
    case "voting.ballot.opened": {
      if (!m.ballots.has(d.ballot_id)) m.ballots.set(d.ballot_id, {
        id: d.ballot_id, election: d.election_id, options: d.options, status: "open", votes_cast: 0,
      });
      const e = m.elections.get(d.election_id);
      if (e && e.status === "nominating") e.status = "voting";
      break;
    }
    case "voting.vote.counted": {
      const b = m.ballots.get(d.ballot_id);
      if (b) b.votes_cast = Math.max(b.votes_cast, d.votes_cast);
      break;
    }
    case "voting.completed": {
      const b = m.ballots.get(d.ballot_id);
      if (b) { b.status = "closed"; b.tally = d.tally; b.votes_cast = d.votes_cast; }
      break;
    }
    case "election.finalized": {
      const e = m.elections.get(d.election_id);
      const result = { outcome: d.outcome, winners: d.winners, tally: d.tally };
      if (e) { e.status = d.outcome === "cancelled" ? "cancelled" : "finalized"; e.result = result; }
      if (item) { item.status = "done"; item.result = result; }
      break;
    }
    case "permission.granted": if (d.role === "manager") m.managers.add(d.user_id); break;
    case "permission.revoked": if (d.role === "manager") m.managers.delete(d.user_id); break;
  }
}

// --- The stream --------------------------------------------------------------------------

function onEvent(e) {
  live.lastEventId = e.lastEventId;
  const data = JSON.parse(e.data);
  if (seen.has(data.event_id)) live.duplicates += 1;
  seen.add(data.event_id);
  live.log.push({ id: e.lastEventId, type: e.type, event_id: data.event_id });
  const li = document.createElement("li");
  li.textContent = `${e.lastEventId} ${e.type}`;
  $("log").prepend(li);
  if (loading) pending.push([e.type, data]);
  else { apply(live.meeting, e.type, data); render(); }
}

function connect(lastEventId) {
  if (source) source.close();
  let url = `/live/meetings/${encodeURIComponent(live.meeting.id)}`;
  if (lastEventId) url += `?last_event_id=${encodeURIComponent(lastEventId)}`;
  const es = (source = new EventSource(url));
  live.connects += 1;
  es.onopen = () => setState("live");
  es.onerror = () => {
    if (es !== source) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (401: the cookie is gone or bad; 429: too many streams): sign in again.
      setState("closed");
      setTimeout(() => renewAndResume().catch(showError), 2000);
    } else {
      setState("reconnecting"); // the browser retries by itself with Last-Event-ID
    }
  };
  for (const type of EVENT_TYPES) es.addEventListener(type, onEvent);
  es.addEventListener("resync", () => {
    live.resyncs += 1;
    follow(live.meeting.id).catch(showError);
  });
  es.addEventListener("reauth", () => {
    live.reauths += 1;
    es.close();
    renewAndResume().catch(showError);
  });
}

async function renewAndResume() {
  await openSession();
  connect(live.lastEventId);
}

// Follow a meeting from now: the stream first, then the snapshot, then what arrived meanwhile.
async function follow(id) {
  live.meeting = emptyMeeting(id);
  loading = true;
  pending = [];
  connect(null);
  try {
    const m = await snapshot(id);
    for (const [type, data] of pending) apply(m, type, data);
    live.meeting = m;
  } finally {
    loading = false;
    pending = [];
  }
  $("meeting").hidden = false;
  location.hash = id;
  render();
}

// --- Drawing ------------------------------------------------------------------------------

function currentElection(m) {
  for (const e of m.elections.values()) if (e.item === m.current) return e;
  return null;
}

function resultText(r) {
  if (!r) return "";
  const tally = Object.entries(r.tally || {}).map(([c, n]) => `${c} ${n}`).join(", ");
  return `${r.outcome}: ${(r.winners || []).join(", ") || "no winner"} (${tally})`;
}

function render() {
  const m = live.meeting;
  if (!m) return;
  $("title").textContent = m.title;
  $("shown-meeting-id").textContent = m.id;
  $("managers").textContent = [...m.managers].sort().join(", ") || "none yet";
  const manager = m.managers.has(live.user);
  document.querySelectorAll(".manage").forEach((el) => { el.hidden = !manager; });

  const agenda = $("agenda");
  agenda.replaceChildren();
  for (const item of [...m.agenda.values()].sort((a, b) => a.position - b.position)) {
    const li = document.createElement("li");
    li.dataset.status = item.status;
    li.dataset.id = item.id;
    li.textContent = `${item.title} (${item.kind}, ${item.status}) `;
    if (item.result) li.textContent += resultText(item.result);
    if (manager && item.status === "pending") {
      const open = document.createElement("button");
      open.textContent = "Open";
      open.onclick = () => act(() => call("meeting", "POST",
        `/meetings/${m.id}/agenda-items/${item.id}/open`));
      li.append(open);
    }
    agenda.append(li);
  }

  const e = currentElection(m);
  $("election").hidden = !e;
  $("ballot").hidden = true;
  $("result").hidden = true;
  if (!e) return;
  $("election-title").textContent = e.title;
  $("election-seats").textContent = e.seats === 1 ? "1 seat" : `${e.seats} seats`;
  $("election-status").textContent = e.status;
  const list = $("candidates");
  list.replaceChildren(...e.candidates.map((c) => {
    const li = document.createElement("li");
    li.textContent = c;
    return li;
  }));
  $("nominate-form").hidden = e.status !== "nominating";
  $("start").hidden = !manager || e.status !== "nominating";
  const b = [...m.ballots.values()].find((x) => x.election === e.id);
  if (b) {
    $("ballot").hidden = false;
    $("ballot-status").textContent = b.status;
    $("votes-cast").textContent = String(b.votes_cast);
    $("vote-form").hidden = b.status !== "open";
    $("close").hidden = !manager || b.status !== "open";
    const choice = $("choice");
    if (choice.options.length !== b.options.length) {
      choice.replaceChildren(...b.options.map((o) => new Option(o, o)));
    }
  }
  if (e.result) {
    $("result").hidden = false;
    $("result-text").textContent = resultText(e.result);
  }
}

async function act(f) {
  showError(null);
  try { await f(); } catch (e) { showError(e); }
}

// --- Wiring -------------------------------------------------------------------------------

async function init() {
  live.config = await (await fetch("/live/config")).json();
  $("user-label").hidden = !live.config.development;
  $("token-label").hidden = live.config.development;
  if (location.hash.length > 1) $("meeting-id").value = location.hash.slice(1);

  $("sign-in-form").onsubmit = (ev) => { ev.preventDefault(); act(openSession); };
  $("create-form").onsubmit = (ev) => {
    ev.preventDefault();
    act(async () => {
      const m = await call("meeting", "POST", "/meetings", { title: $("meeting-title").value });
      await follow(m.id);
    });
  };
  $("open-form").onsubmit = (ev) => {
    ev.preventDefault();
    act(() => follow($("meeting-id").value.trim()));
  };
  $("item-form").onsubmit = (ev) => {
    ev.preventDefault();
    act(() => call("meeting", "POST", `/meetings/${live.meeting.id}/agenda-items`, {
      title: $("item-title").value, kind: $("item-kind").value,
      ...($("item-kind").value === "election" ? { seats: Number($("item-seats").value) } : {}),
    }));
  };
  $("nominate-form").onsubmit = (ev) => {
    ev.preventDefault();
    const e = currentElection(live.meeting);
    act(() => call("election", "POST", `/elections/${e.id}/nominations`, {
      candidate: $("candidate").value.trim(),
    }));
  };
  $("start").onclick = () => act(() => call("meeting", "POST",
    `/meetings/${live.meeting.id}/agenda-items/${live.meeting.current}/start-election`));
  $("vote-form").onsubmit = (ev) => {
    ev.preventDefault();
    const b = [...live.meeting.ballots.values()].find((x) => x.election === currentElection(live.meeting).id);
    act(() => call("voting", "POST", `/ballots/${b.id}/votes`, { choice: $("choice").value }));
  };
  $("close").onclick = () => {
    const b = [...live.meeting.ballots.values()].find((x) => x.election === currentElection(live.meeting).id);
    act(() => call("voting", "POST", `/ballots/${b.id}/close`));
  };
}

init().catch(showError);
