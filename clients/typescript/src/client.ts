// A typed client of the meeting system's HTTP APIs: what a React app writes once, with every
// type generated from openapi.json (`npm run generate` → src/api.d.ts). A route whose
// request or answer changes shape makes this file fail to compile.
//
// It uses plain fetch against one origin (the Ingress in front of every role); `walk` carries
// a meeting from creation to its result the way the demo does.

import type { components, paths } from "./api";

export type Schemas = components["schemas"];
export type ErrorBody = Schemas["ErrorBody"];
export type ErrorCode = Schemas["ErrorCode"];

type Method = "get" | "post" | "delete";
type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;

/** The JSON body of an operation's first success answer (200 or 201). */
type Answer<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { responses: infer R }
    ? R extends { 200: { content: { "application/json": infer B } } }
      ? B
      : R extends { 201: { content: { "application/json": infer B } } }
        ? B
        : undefined
    : never;

/** The JSON request body an operation takes, if any. */
type Body<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { requestBody: { content: { "application/json": infer B } } }
    ? B
    : undefined;

/** An error answer, with its stable code. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(`${status} ${body.error}: ${body.message}`);
  }
}

export class Client {
  constructor(
    private readonly origin: string,
    private readonly token: string,
  ) {}

  /** Call `method template` with its path parameters filled in, typed by the document. */
  async call<P extends keyof paths, M extends Method>(
    method: M,
    template: P,
    params: Record<string, string>,
    body?: Body<P, M>,
  ): Promise<Answer<P, M>> {
    const path = String(template).replace(/\{(\w+)\}/g, (_, name: string) => {
      const value = params[name];
      if (value === undefined) throw new Error(`missing path parameter ${name}`);
      return encodeURIComponent(value);
    });
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const init: RequestInit = { method: method.toUpperCase(), headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(this.origin + path, init);
    const text = await response.text();
    if (!response.ok) throw new ApiError(response.status, JSON.parse(text) as ErrorBody);
    return (text ? JSON.parse(text) : undefined) as Answer<P, M>;
  }

  createMeeting(title: string): Promise<Schemas["MeetingView"]> {
    return this.call("post", "/meetings", {}, { title });
  }

  meeting(id: string): Promise<Schemas["MeetingView"]> {
    return this.call("get", "/meetings/{id}", { id });
  }

  /** An agenda item; an election item may fill `seats` (1–50, default 1). */
  addItem(
    meeting: string,
    title: string,
    kind: Schemas["ItemKind"],
    seats?: number,
  ): Promise<Schemas["AgendaItem"]> {
    const body = seats === undefined ? { title, kind } : { title, kind, seats };
    return this.call("post", "/meetings/{id}/agenda-items", { id: meeting }, body);
  }

  openItem(meeting: string, item: string): Promise<Schemas["AgendaItem"]> {
    return this.call("post", "/meetings/{id}/agenda-items/{item_id}/open", { id: meeting, item_id: item });
  }

  startElection(meeting: string, item: string): Promise<Schemas["AgendaItem"]> {
    return this.call("post", "/meetings/{id}/agenda-items/{item_id}/start-election", {
      id: meeting,
      item_id: item,
    });
  }

  elections(meeting: string): Promise<Schemas["ElectionView"][]> {
    return this.call("get", "/elections", {}).then((all) => all.filter((e) => e.meeting_id === meeting));
  }

  nominate(election: string, candidate: string): Promise<Schemas["NominationView"]> {
    return this.call("post", "/elections/{id}/nominations", { id: election }, { candidate });
  }

  ballots(): Promise<Schemas["BallotView"][]> {
    return this.call("get", "/ballots", {});
  }

  vote(ballot: string, choice: string): Promise<Schemas["VoteView"]> {
    return this.call("post", "/ballots/{id}/votes", { id: ballot }, { choice });
  }

  close(ballot: string): Promise<Schemas["BallotView"]> {
    return this.call("post", "/ballots/{id}/close", { id: ballot });
  }
}

/** Wait until `probe` yields a value (events reach the other roles within a moment). */
async function until<T>(probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Create a meeting, open an election item, nominate, start, vote and close: the item's
 * result. `as` gives a client acting as a user (their bearer token).
 */
export async function walk(as: (user: string) => Client): Promise<Schemas["ItemResult"]> {
  const alice = as("alice");
  const meeting = await alice.createMeeting("Annual general meeting");
  // The creator manages the meeting once the permission role's grant comes back.
  await until(async () => ((await alice.meeting(meeting.id)).managers.includes("alice") ? true : undefined));
  const item = await alice.addItem(meeting.id, "Elect the chair", "election");
  await alice.openItem(meeting.id, item.id);
  const election = await until(async () => (await alice.elections(meeting.id))[0]);
  for (const candidate of ["ada", "grace"]) await alice.nominate(election.id, candidate);
  await alice.startElection(meeting.id, item.id);
  const ballot = await until(async () => (await alice.ballots()).find((b) => b.election_id === election.id));
  await as("bob").vote(ballot.id, "ada");
  await as("carol").vote(ballot.id, "ada");
  await alice.vote(ballot.id, "grace");
  await alice.close(ballot.id);
  const done = await until(async () => {
    const m = await alice.meeting(meeting.id);
    return m.agenda.find((i) => i.id === item.id)?.result ?? undefined;
  });
  return done;
}
