// The playground websocket. It connects when the page opens and, after the server goes away
// (a restart, a network change), connects again only when the user next sends: no retry loop
// hammering a server that is down.

const CONNECT_TIMEOUT_MS = 10000;

export class GatewaySocket {
  /**
   * @param {string} path  server path of the websocket, e.g. "/ws/playground/"
   * @param {{onFrame: (frame: object) => void, onState: (state: string, detail?: object) => void}} handlers
   */
  constructor(path, { onFrame, onState }) {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    this.url = scheme + location.host + path;
    this.onFrame = onFrame;
    this.onState = onState;
    this.ws = null;
    this.opening = null;
    this.state = "closed";
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  /** Resolves once the socket is open; rejects if it cannot be opened. */
  connect() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) return Promise.resolve();
    if (this.opening) return this.opening;

    this.opening = new Promise((resolve, reject) => {
      let settled = false;
      let opened = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      this.setState("connecting");

      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        ws.close();
        reject(new Error("The playground service did not answer in time."));
      }, CONNECT_TIMEOUT_MS);

      ws.addEventListener("open", () => {
        if (settled) return;
        settled = true;
        opened = true;
        clearTimeout(timer);
        this.setState("open");
        resolve();
      });

      ws.addEventListener("message", (event) => {
        if (typeof event.data !== "string") return;
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (frame && typeof frame === "object") this.onFrame(frame);
      });

      ws.addEventListener("close", (event) => {
        clearTimeout(timer);
        if (this.ws === ws) this.ws = null;
        this.opening = null;
        if (!settled) {
          settled = true;
          reject(new Error("Could not connect to the playground service."));
        }
        this.setState("closed", { code: event.code, reason: event.reason, wasOpen: opened });
      });
    }).finally(() => {
      this.opening = null;
    });
    return this.opening;
  }

  async send(frame) {
    await this.connect();
    this.ws.send(JSON.stringify(frame));
  }

  /** Sends only if already open; for best-effort frames such as cancel. */
  sendIfOpen(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}
