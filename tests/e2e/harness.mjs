// Process and HTTP helpers for the bearerd e2e suite: every child is tracked and killed on
// exit, whatever happens; bearerd's output is captured for the secret scan.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const BEARERD_BIN = resolve(HERE, process.env.BEARERD_BIN || '../../target/debug/bearerd');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const children = new Set();

function killAllNow() {
  for (const c of children) {
    try {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    } catch { /* already gone */ }
  }
}
process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAllNow();
    process.exit(130);
  });
}

/** A spawned child whose stdout and stderr are kept (and optionally echoed). */
export class Child {
  constructor(name, proc) {
    this.name = name;
    this.proc = proc;
    this.stdout = '';
    this.stderr = '';
    this.exited = new Promise((res) => {
      proc.on('exit', (code, signal) => {
        children.delete(proc);
        res({ code, signal });
      });
    });
    proc.stdout?.on('data', (d) => {
      this.stdout += d;
      this.#notify();
    });
    proc.stderr?.on('data', (d) => {
      this.stderr += d;
      if (process.env.E2E_VERBOSE) process.stderr.write(`[${name}] ${d}`);
      this.#notify();
    });
    this.waiters = [];
  }

  #notify() {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves with the first match of `re` in stdout (or stderr with `stream`). */
  waitFor(re, { timeoutMs = 15000, stream = 'stdout' } = {}) {
    return new Promise((resolveP, rejectP) => {
      let timer;
      const check = () => {
        const m = re.exec(this[stream]);
        if (m) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== check);
          resolveP(m);
        }
      };
      timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check);
        rejectP(new Error(`${this.name}: no ${re} within ${timeoutMs} ms\nstdout: ${this.stdout.slice(-2000)}\nstderr: ${this.stderr.slice(-2000)}`));
      }, timeoutMs);
      this.waiters.push(check);
      this.exited.then(({ code, signal }) => {
        if (!re.exec(this[stream])) {
          clearTimeout(timer);
          rejectP(new Error(`${this.name} exited (${code ?? signal}) before printing ${re}\nstdout: ${this.stdout.slice(-2000)}\nstderr: ${this.stderr.slice(-2000)}`));
        }
      });
      check();
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 3000) {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.exited;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }

  /** Waits for the exit, killing the child after `timeoutMs`. */
  async wait(timeoutMs = 30000) {
    const t = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

/**
 * Spawns `cmd`; retries when the executable cannot be started (bearerd's binary may be
 * replaced by a rebuild while the suite runs).
 */
export async function start(name, cmd, args, { env = {}, cwd = HERE, retries = 10 } = {}) {
  for (let attempt = 1; ; attempt += 1) {
    const proc = spawn(cmd, args, {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const spawned = await new Promise((res) => {
      proc.once('spawn', () => res(null));
      proc.once('error', (err) => res(err));
    });
    if (!spawned) {
      children.add(proc);
      return new Child(name, proc);
    }
    if (attempt >= retries) throw new Error(`cannot start ${cmd}: ${spawned.message}`);
    await sleep(3000);
  }
}

export function bearerd(name, args, opts = {}) {
  if (!existsSync(BEARERD_BIN)) throw new Error(`no bearerd binary at ${BEARERD_BIN} (set BEARERD_BIN)`);
  return start(name, BEARERD_BIN, args, opts);
}

/** Runs a bearerd CLI command to completion: { code, stdout, stderr }. */
export async function bearerdCli(args, { timeoutMs = 30000, env } = {}) {
  const c = await bearerd(`bearerd ${args[0]}`, args, { env });
  const { code, signal } = await c.wait(timeoutMs);
  return { code: code ?? signal, stdout: c.stdout, stderr: c.stderr };
}

/** Starts one of this folder's node services and waits for its "listening" JSON line. */
export async function startNodeService(script, args) {
  const c = await start(script, process.execPath, [resolve(HERE, script), ...args]);
  const m = await c.waitFor(/^(\{"event":"listening".*\})$/m);
  c.info = JSON.parse(m[1]);
  return c;
}

/** `n` distinct free ports on 127.0.0.1 (held together, then released). */
export async function freePorts(n) {
  const servers = [];
  for (let i = 0; i < n; i += 1) {
    const s = createServer();
    await new Promise((res, rej) => {
      s.once('error', rej);
      s.listen(0, '127.0.0.1', res);
    });
    servers.push(s);
  }
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((res) => { s.close(res); })));
  return ports;
}

export async function getJson(url, init) {
  const r = await fetch(url, init);
  const text = await r.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: r.status, headers: r.headers, body };
}

/** Polls `fn` until it returns a truthy value; throws with `what` after `timeoutMs`. */
export async function until(what, fn, { timeoutMs = 15000, intervalMs = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last?.stack || JSON.stringify(last)}`);
    await sleep(intervalMs);
  }
}
