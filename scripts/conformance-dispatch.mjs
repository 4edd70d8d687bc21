// Stands in for a conformance suite's `node-imports.js` when scripts/conformance runs it under
// Node. It loads the suite's own packages (ws, node-fetch, chai, chai-string, from the suite's
// node_modules: SUITE_DIR) and changes one thing: how WebSocket events are dispatched.
//
// The official suites were written for a browser (their index.html), where every WebSocket
// `message` event is a task of its own. A test awaits one message, then attaches the listener
// for the next. Under Node, `ws` emits every frame of one TCP read synchronously, one after the
// other, so when two frames arrive together (the CONNECT reply and the event the server emits in
// its connection handler, say) the second is emitted before the test listens for it, and lost.
// Against the official Node server itself, the Socket.IO suite then fails at random (most runs
// have one to five failures); against a server that writes both frames with one syscall, always.
//
// Here, the first event of a burst is emitted at once, as `ws` does (a frame that nobody awaits
// is still dropped, which some upgrade tests rely on), and each further `message` or `close`
// event of the burst waits for its own turn of the event loop (setImmediate), as in a browser.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const suiteDir = process.env.SUITE_DIR;
if (!suiteDir) throw new Error("SUITE_DIR is not set: run the suite with scripts/conformance");
const require = createRequire(path.join(suiteDir, "package.json"));

const { default: fetch } = await import(pathToFileURL(require.resolve("node-fetch")).href);
const { WebSocket } = require("ws");
const chai = require("chai");
chai.use(require("chai-string"));

const ONE_PER_TURN = new Set(["message", "close"]);

class TaskPerEventWebSocket extends WebSocket {
  #waiting = [];
  #busy = false;

  emit(event, ...args) {
    if (!ONE_PER_TURN.has(event)) return super.emit(event, ...args);
    if (this.#busy) {
      this.#waiting.push([event, args]);
      return true;
    }
    this.#busy = true;
    const listened = super.emit(event, ...args);
    this.#next();
    return listened;
  }

  #next() {
    setImmediate(() => {
      const queued = this.#waiting.shift();
      if (!queued) {
        this.#busy = false;
        return;
      }
      super.emit(queued[0], ...queued[1]);
      this.#next();
    });
  }
}

globalThis.fetch = fetch;
globalThis.WebSocket = TaskPerEventWebSocket;
globalThis.chai = chai;
