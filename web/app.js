// Banter chat page. It follows the event contract in docs/protocol.md.
// User data (names, messages) only ever reaches the DOM as text nodes.
import { io } from "/socket.io/socket.io.esm.min.js";

const MAX_NAME_CHARS = 32;
const MAX_MESSAGE_CHARS = 2000;
const MAX_RENDERED = 1000;       // older DOM entries are dropped so long sessions stay fast
const ACK_TIMEOUT_MS = 10000;
const TYPING_IDLE_MS = 1500;     // send `stop typing` after this long without a keystroke
const TYPING_REFRESH_MS = 3000;  // re-send `typing` while typing, so others do not expire us
const TYPER_EXPIRY_MS = 6000;    // forget a typer whose `stop typing` got lost
const STATUS_HIDE_MS = 4000;
const NEAR_BOTTOM_PX = 80;
const PALETTE_SIZE = 12;         // matches the [data-color] rules in style.css

const $ = (id) => document.getElementById(id);
const els = {
  login: $("login"), loginForm: $("login-form"), nickname: $("nickname"),
  loginError: $("login-error"), join: $("join"),
  chat: $("chat"), messages: $("messages"), newMessages: $("new-messages"),
  composerForm: $("composer-form"), composer: $("composer"), send: $("send"),
  hint: $("composer-hint"), typing: $("typing"),
  participants: $("participants"), users: $("users"),
  usersToggle: $("users-toggle"), status: $("status"),
};

const state = {
  socket: null,
  username: "",
  session: "",
  joinedOnce: false,   // after the first login, every `connect` is a reconnect
  joined: false,       // the current connection has been accepted by `add user`
  replaced: false,     // another tab took over our session: do not reconnect on our own
  lastId: 0,           // greatest message id seen, sent as `lastId` when rejoining
  users: [],
  shownIds: new Set(), // ids (as strings) of rendered messages, so nothing shows twice
  unconfirmed: [],     // own messages that have no server id yet
  early: [],           // `new message` events that came before this connection's login
  typers: new Map(),   // username -> expiry timer
  unread: 0,
};
const typing = { active: false, lastSent: 0, idleTimer: 0 };
let statusTimer = 0;

// ---------- small helpers ----------

// The server counts Unicode scalar values, not UTF-16 code units.
const charCount = (text) => [...text].length;
const sameName = (a, b) => a.toLowerCase() === b.toLowerCase();
const byName = (a, b) => a.toLowerCase().localeCompare(b.toLowerCase());

// FNV-1a over the lowercased name: stable across sessions and devices,
// and case-insensitive like nicknames themselves.
function colorIndex(name) {
  let hash = 0x811c9dc5;
  for (const ch of name.toLowerCase()) {
    hash ^= ch.codePointAt(0);
    hash = Math.imul(hash, 0x01000193);
  }
  return String((hash >>> 0) % PALETTE_SIZE);
}

// The reader's own clock style, as their locale writes a short time: "07:05" in German or
// British English, "7:05" in Japanese, "7:05 AM" in US English. (`hour: "numeric"` alone would
// give "7:05" everywhere.)
const hourStyle = new Intl.DateTimeFormat(undefined, { timeStyle: "short" })
  .formatToParts(new Date(2000, 0, 1, 7, 5))
  .find((part) => part.type === "hour")?.value.length === 2 ? "2-digit" : "numeric";
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: hourStyle, minute: "2-digit" });
const dayTimeFormat = new Intl.DateTimeFormat(undefined,
  { month: "short", day: "numeric", hour: hourStyle, minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

function setTime(timeEl, ts) {
  const date = new Date(Number.isFinite(ts) ? ts : Date.now());
  const today = date.toDateString() === new Date().toDateString();
  timeEl.dateTime = date.toISOString();
  timeEl.textContent = (today ? timeFormat : dayTimeFormat).format(date);
  timeEl.title = fullFormat.format(date);
}

const ERROR_TEXT = {
  rate_limited: "You are sending messages too fast",
  too_long: `Messages can be at most ${MAX_MESSAGE_CHARS} characters`,
  empty: "Empty messages are not sent",
  not_joined: "You are not in the chat",
  invalid_name: "That nickname is not allowed",
  name_taken: "That nickname is taken, try another one",
  unavailable: "The server could not store the message, try again",
  unconfirmed: "Not confirmed yet: it may still arrive",
  bad_request: "The server did not understand the request",
  timeout: "The server did not answer in time",
};
function describeError(error) {
  return ERROR_TEXT[error?.code] || error?.message || "Something went wrong";
}

// The only way this page creates elements: text goes in via textContent, never as HTML.
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------- the message log ----------

function isNearBottom() {
  const log = els.messages;
  return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  els.messages.scrollTop = els.messages.scrollHeight;
  els.newMessages.hidden = true;
}

// Appends an entry, following the conversation only if the reader is already at the end:
// someone reading older messages is not yanked down, they get the "New messages" button.
function appendEntry(entry, { forceScroll = false } = {}) {
  const follow = forceScroll || isNearBottom();
  els.messages.append(entry);
  trimLog();
  if (follow) scrollToBottom();
  else if (entry.classList.contains("message")) els.newMessages.hidden = false;
}

function trimLog() {
  const log = els.messages;
  let excess = log.childElementCount - MAX_RENDERED;
  if (excess <= 0) return;
  const before = log.scrollHeight;
  while (excess-- > 0) {
    const oldest = log.firstElementChild;
    if (oldest.dataset.id) state.shownIds.delete(oldest.dataset.id);
    oldest.remove();
  }
  state.unconfirmed = state.unconfirmed.filter((record) => record.el.isConnected);
  // Keep what the reader is looking at in place when they have scrolled up.
  log.scrollTop -= before - log.scrollHeight;
}

function notice(text, kind) {
  appendEntry(el("div", kind ? `notice ${kind}` : "notice", text));
}

// Links are built from text with createElement, and only for http(s) URLs.
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"']+/gi;
function appendLinkified(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    // Trailing punctuation usually ends the sentence, not the URL.
    const url = match[0].replace(/[.,;:!?)\]}]+$/, "");
    parent.append(text.slice(last, match.index));
    const link = el("a", "", url);
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
    parent.append(link);
    last = match.index + url.length;
  }
  parent.append(text.slice(last));
}

// A mention is the nickname as a whole word ("hi Lea!", "@lea"), not inside another word
// ("release", "please"). The pattern is rebuilt only when the nickname changes.
let mentionPattern = { name: null, regex: null };
function mentionsMe(text) {
  if (!state.username) return false;
  if (mentionPattern.name !== state.username) {
    const escaped = state.username.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    mentionPattern = {
      name: state.username,
      // No lookbehind: Safari before 16.4 cannot compile it.
      regex: new RegExp(`(?:^|[^\\p{L}\\p{N}_])${escaped}(?![\\p{L}\\p{N}_])`, "iu"),
    };
  }
  return mentionPattern.regex.test(text);
}

function messageElement({ username, message, id, ts }) {
  const entry = el("div", "message");
  if (id != null) entry.dataset.id = String(id);
  const meta = el("div", "meta");
  const author = el("span", "author", username);
  author.dataset.color = colorIndex(username);
  const time = document.createElement("time");
  setTime(time, ts);
  meta.append(author, " ", time);
  const body = el("p", "body");
  appendLinkified(body, message);
  entry.append(meta, body);
  if (sameName(username, state.username)) entry.classList.add("own");
  else if (mentionsMe(message)) entry.classList.add("mention");
  return entry;
}

function noteId(id) {
  if (typeof id === "number" && id > state.lastId) state.lastId = id;
}

function receiveMessage(msg, { fromHistory = false } = {}) {
  if (!msg || typeof msg.username !== "string" || typeof msg.message !== "string") return;
  const key = msg.id != null ? String(msg.id) : "";
  if (key && state.shownIds.has(key)) return;
  noteId(msg.id);
  if (fromHistory && adoptOwn(msg)) return;
  if (key) state.shownIds.add(key);
  appendEntry(messageElement(msg));
  if (!fromHistory) countUnread();
}

// Renders history while the log is marked busy, so screen readers are not
// flooded with a hundred announcements.
function renderHistory(history, { divider }) {
  const items = Array.isArray(history) ? history : [];
  if (!items.length) return;
  els.messages.setAttribute("aria-busy", "true");
  if (divider) appendEntry(el("div", "divider", "Earlier messages"));
  for (const msg of items) receiveMessage(msg, { fromHistory: true });
  els.messages.setAttribute("aria-busy", "false");
}

// ---------- sending ----------

function setDelivery(record, status, detail) {
  record.status = status;
  const entry = record.el;
  entry.dataset.status = status;
  entry.classList.toggle("pending", status === "pending");
  entry.classList.toggle("failed", status === "failed");
  entry.querySelector(".delivery")?.remove();
  // Pending is shown on the author line, so the message keeps its height when the ack comes
  // (a line of its own would appear and vanish for every message, making the log jump).
  if (status === "pending") entry.querySelector(".meta").append(el("span", "delivery", "Sending…"));
  if (status === "failed") {
    const line = el("p", "delivery", `Not sent: ${detail}. `);
    const retry = el("button", "retry", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => { deliver(record); els.composer.focus(); });
    line.append(retry);
    entry.append(line);
  }
}

// socket.io fails pending acks with this error when the connection drops.
const socketLost = (err) => /disconnected/.test(err?.message || "");

function markSent(record, id, ts, localOnly) {
  setDelivery(record, "sent");
  // Redis unreachable: the server's instance delivered it to the people on it, and kept nothing.
  if (localOnly) record.el.append(el("p", "delivery", "Only people on this server got it; it is not kept in the history."));
  record.el.dataset.id = String(id);
  // Shown (its copy in a later history is dropped), but not counted in lastId: with several
  // instances, the ack of our message can arrive before earlier messages of others that are
  // still on their way to us; a lastId raised by the ack would skip them after a reconnect.
  state.shownIds.add(String(id));
  setTime(record.el.querySelector("time"), ts);
  state.unconfirmed = state.unconfirmed.filter((r) => r !== record);
}

// `maybeStored`: the server may have stored it even though no ack came back
// (timeout, dropped connection). Such a message is matched up with the history
// on rejoin instead of being shown twice.
function markFailed(record, detail, maybeStored) {
  record.maybeStored = maybeStored;
  setDelivery(record, "failed", detail);
}

function adoptOwn(msg) {
  if (!sameName(msg.username, state.username)) return false;
  const record = state.unconfirmed.find((r) => r.maybeStored && r.text === msg.message);
  if (!record) return false;
  markSent(record, msg.id, msg.ts);
  return true;
}

function deliver(record) {
  const attempt = (record.attempt = (record.attempt || 0) + 1);
  if (!state.unconfirmed.includes(record)) state.unconfirmed.push(record);
  setDelivery(record, "pending");
  if (!state.joined) {
    // socket.io would buffer it and send it before we rejoin, where it is refused.
    markFailed(record, "you are offline", record.maybeStored === true);
    return;
  }
  record.maybeStored = true;
  state.socket.timeout(ACK_TIMEOUT_MS).emit("new message", record.text, (err, res) => {
    // Ignore answers to an older attempt, or for a message the history already confirmed.
    if (record.attempt !== attempt || record.status !== "pending") return;
    if (err) markFailed(record, socketLost(err) ? "connection lost" : "no answer from the server", true);
    // `unconfirmed`: the store may still take it; the history settles which.
    else if (res?.error) markFailed(record, describeError(res.error), res.error.code === "unconfirmed");
    else if (res?.id != null) markSent(record, res.id, res.ts, res.localOnly === true);
    else markFailed(record, "unexpected answer from the server", true);
  });
}

function sendMessage() {
  const text = els.composer.value.trim();
  if (!text) return;
  if (charCount(text) > MAX_MESSAGE_CHARS) return updateHint(); // the hint says why
  stopTyping();
  els.composer.value = "";
  updateHint();
  const record = { text, el: messageElement({ username: state.username, message: text, ts: Date.now() }) };
  record.el.classList.add("own");
  appendEntry(record.el, { forceScroll: true });
  deliver(record);
}

function updateHint() {
  const count = charCount(els.composer.value.trim());
  const over = count > MAX_MESSAGE_CHARS;
  els.hint.classList.toggle("error", over);
  els.composer.setAttribute("aria-invalid", String(over));
  // Stable wording while over the limit, so the live region does not chatter on every key.
  if (over) els.hint.textContent = `Too long: ${MAX_MESSAGE_CHARS} characters at most`;
  else if (count > MAX_MESSAGE_CHARS - 200) els.hint.textContent = `${MAX_MESSAGE_CHARS - count} left`;
  else els.hint.textContent = "";
}

// ---------- typing ----------

function onComposerInput() {
  updateHint();
  if (!state.joined) return;
  if (!els.composer.value.trim()) return stopTyping();
  const now = Date.now();
  if (!typing.active || now - typing.lastSent > TYPING_REFRESH_MS) {
    state.socket.emit("typing");
    typing.active = true;
    typing.lastSent = now;
  }
  clearTimeout(typing.idleTimer);
  typing.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typing.idleTimer);
  if (!typing.active) return;
  typing.active = false;
  if (state.joined) state.socket.emit("stop typing");
}

function renderTyping() {
  const names = [...state.typers.keys()];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing`;
  else if (names.length > 2) text = "Several people are typing";
  els.typing.textContent = text;
}

function typerStarted(name) {
  if (typeof name !== "string" || sameName(name, state.username)) return;
  clearTimeout(state.typers.get(name));
  state.typers.set(name, setTimeout(() => typerStopped(name), TYPER_EXPIRY_MS));
  renderTyping();
}

function typerStopped(name) {
  if (!state.typers.has(name)) return;
  clearTimeout(state.typers.get(name));
  state.typers.delete(name);
  renderTyping();
}

function clearTypers() {
  for (const timer of state.typers.values()) clearTimeout(timer);
  state.typers.clear();
  renderTyping();
}

// ---------- presence ----------

function setCount(numUsers) {
  if (!Number.isFinite(numUsers)) return;
  els.participants.textContent = `${numUsers} ${numUsers === 1 ? "participant" : "participants"}`;
}

function renderUsers() {
  const items = state.users.map((name) => {
    const item = el("li", sameName(name, state.username) ? "me" : "", name);
    item.dataset.color = colorIndex(name);
    return item;
  });
  els.users.replaceChildren(...items);
}

function setUsers(list) {
  state.users = list.filter((n) => typeof n === "string").sort(byName);
  renderUsers();
}

function addUser(name) {
  if (!state.users.some((n) => sameName(n, name))) setUsers([...state.users, name]);
}

function removeUser(name) {
  setUsers(state.users.filter((n) => !sameName(n, name)));
}

function setSidebar(open) {
  els.usersToggle.setAttribute("aria-expanded", String(open));
  els.chat.classList.toggle("sidebar-open", open);
}

// ---------- connection banner ----------

function setStatus(connState, text, { autoHide = false, action = null } = {}) {
  clearTimeout(statusTimer);
  els.status.dataset.state = connState;
  els.status.replaceChildren();
  if (text) els.status.append(text);
  if (action) {
    const button = el("button", "status-action", action.label);
    button.type = "button";
    button.addEventListener("click", action.run);
    els.status.append(" ", button);
  }
  // Emptied rather than removed: a live region must stay in the page to be announced.
  if (autoHide) statusTimer = setTimeout(() => els.status.replaceChildren(), STATUS_HIDE_MS);
}

function reconnect() {
  if (!state.socket) return;
  state.replaced = false;
  setStatus("reconnecting", "Reconnecting…");
  state.socket.connect();
}

// ---------- joining ----------

function transportsFromUrl() {
  const wanted = new URLSearchParams(location.search).get("transports");
  if (!wanted) return null;
  const list = wanted.split(",").map((t) => t.trim()).filter((t) => ["polling", "websocket"].includes(t));
  return list.length ? list : null;
}

function connect() {
  const options = {
    // A function, so each reconnect presents the newest session token.
    auth: (cb) => cb(state.session ? { session: state.session } : {}),
    // A server may allow WebSocket only (or polling only): try the next transport when the
    // first is refused instead of failing.
    tryAllTransports: true,
  };
  const transports = transportsFromUrl();
  if (transports) options.transports = transports; // an undefined value would break the default
  const socket = io(options);
  state.socket = socket;
  socket.on("connect", onConnect);
  socket.on("connect_error", onConnectError);
  socket.on("disconnect", onDisconnect);
  socket.on("login", applyLogin);
  socket.on("new message", (msg) => {
    typerStopped(msg?.username);
    // The server subscribes a joining socket before it reads the history, so a message can
    // arrive just before the login whose history also holds it, and older missed ones. Held
    // until the history is shown, it lands after them, in order (and its copy is dropped by id).
    if (!state.joined) state.early.push(msg);
    else receiveMessage(msg);
  });
  socket.on("user joined", (data) => onUserChange(socket, data, "joined"));
  socket.on("user left", (data) => onUserChange(socket, data, "left"));
  socket.on("typing", (data) => typerStarted(data?.username));
  socket.on("stop typing", (data) => typerStopped(data?.username));
  socket.on("error message", onErrorMessage);
}

// `user joined` / `user left`. During a storm (many people joining or leaving at once) the server
// announces them together: `usernames` lists them (the latest 50) and `count` says how many.
function onUserChange(socket, data, what) {
  if (typeof data?.username !== "string") return;
  const listed = Array.isArray(data.usernames)
    ? data.usernames.filter((n) => typeof n === "string")
    : [];
  const names = listed.length ? listed : [data.username];
  const count = Number.isInteger(data.count) && data.count > names.length ? data.count : names.length;
  for (const name of names) {
    if (what === "joined") addUser(name);
    else {
      removeUser(name);
      typerStopped(name);
    }
  }
  setCount(data.numUsers);
  notice(`${describeNames(names, count)} ${what}`);
  // More people than the event names: ask for the whole list rather than show a partial one.
  if (count > names.length) {
    socket.emit("list users", (reply) => {
      if (Array.isArray(reply?.users)) setUsers(reply.users);
    });
  }
}

// "alice", "alice and bob", "alice, bob and carol", "alice, bob and 12 others".
function describeNames(names, count) {
  if (count === 1) return names[0];
  if (count === 2 && names.length === 2) return `${names[0]} and ${names[1]}`;
  if (count === 3 && names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]}`;
  const shown = names.slice(-2);
  return `${shown.join(", ")} and ${count - shown.length} others`;
}

function teardown() {
  if (!state.socket) return;
  state.socket.off();
  state.socket.disconnect();
  state.socket = null;
}

function join() {
  const socket = state.socket;
  const rejoin = state.joinedOnce;
  const payload = { username: state.username };
  // Without lastId the server sends the latest messages, which is right when we have seen none.
  if (rejoin && state.lastId > 0) payload.lastId = state.lastId;
  socket.timeout(ACK_TIMEOUT_MS).emit("add user", payload, (err, res) => {
    if (socket !== state.socket) return; // a newer login attempt replaced this socket
    // Without a connection the next `connect` tries again; otherwise the server is stuck.
    if (err) { if (socket.connected) joinFailed({ code: "timeout" }, rejoin); }
    else if (res?.error) joinFailed(res.error, rejoin);
    else applyLogin(res);
  });
}

function joinFailed(error, rejoin) {
  if (!rejoin) {
    teardown();
    setLoginBusy(false);
    return showLoginError(describeError(error));
  }
  notice(`Could not rejoin the chat: ${describeError(error)}`, "error");
  state.socket.disconnect();
  setStatus("disconnected", "You are not in the chat.", { action: { label: "Try again", run: reconnect } });
}

// Both the `login` event and the `add user` ack carry this payload; the first one wins.
function applyLogin(data) {
  if (state.joined || typeof data?.username !== "string") return;
  const first = !state.joinedOnce;
  state.joined = true;
  state.joinedOnce = true;
  if (typeof data.session === "string") state.session = data.session;
  state.username = data.username;
  setUsers(Array.isArray(data.users) ? data.users : [data.username]);
  setCount(data.numUsers);
  clearTypers();
  if (first) showChat();
  if (!first && data.historyComplete === false) notice("Some messages were missed while you were away", "warning");
  renderHistory(data.history, { divider: first });
  if (data.renamedFrom) notice(`You are now known as ${data.username}`);
  else if (first) notice(`You joined as ${data.username}`);
  const early = state.early;
  state.early = [];
  for (const msg of early) receiveMessage(msg);
  if (first) scrollToBottom();
}

function showChat() {
  setLoginBusy(false);
  els.login.hidden = true;
  els.chat.hidden = false;
  updateHint();
  els.composer.focus();
}

// ---------- socket events ----------

function onConnect() {
  state.early = [];
  if (state.joinedOnce) setStatus("connected", "Reconnected", { autoHide: true });
  else setStatus("connected", "");
  join();
}

function onConnectError(err) {
  if (!state.joinedOnce) {
    showLoginError(`Cannot reach the server (${err?.message || "network error"}). Still trying…`, false);
  } else if (state.socket?.active) {
    setStatus("reconnecting", "Connection lost. Reconnecting…");
  }
}

function onDisconnect(reason) {
  state.joined = false;
  typing.active = false;
  clearTimeout(typing.idleTimer);
  clearTypers();
  if (!state.joinedOnce) return; // the login screen reports its own problems
  if (state.replaced) {
    setStatus("disconnected", "You joined from another tab or device.",
      { action: { label: "Use this tab", run: reconnect } });
  } else if (reason === "io client disconnect") {
    setStatus("disconnected", ""); // we closed it ourselves (page hidden, rejoin failed)
  } else if (reason === "io server disconnect") {
    // socket.io does not retry after the server closed the connection on purpose.
    setStatus("disconnected", "Disconnected by the server.", { action: { label: "Reconnect", run: reconnect } });
  } else {
    setStatus("reconnecting", "Connection lost. Reconnecting…");
  }
}

function onErrorMessage(error) {
  if (error?.code === "replaced") {
    // The server disconnects us; make sure socket.io does not fight the other tab for the session.
    state.replaced = true;
    notice("You joined from another tab or device", "warning");
    state.socket?.disconnect();
    return;
  }
  notice(describeError(error), "error");
}

// ---------- login screen ----------

function validateName(name) {
  if (!name) return "Please enter a nickname.";
  if (charCount(name) > MAX_NAME_CHARS) return `Nicknames can be at most ${MAX_NAME_CHARS} characters.`;
  if (/\p{Cc}/u.test(name)) return "Nicknames cannot contain control characters.";
  return "";
}

function showLoginError(text, nameIsWrong = Boolean(text)) {
  els.loginError.textContent = text;
  els.nickname.setAttribute("aria-invalid", String(nameIsWrong));
}

function setLoginBusy(busy) {
  els.join.textContent = busy ? "Joining…" : "Join chat";
  els.loginForm.setAttribute("aria-busy", String(busy));
}

function onLoginSubmit(event) {
  event.preventDefault();
  const name = els.nickname.value.trim();
  const problem = validateName(name);
  if (problem) { showLoginError(problem); return els.nickname.focus(); }
  showLoginError("");
  teardown(); // an earlier attempt may still be trying to connect
  state.username = name;
  setLoginBusy(true);
  connect();
}

// ---------- page-level behaviour ----------

function countUnread() {
  if (document.visibilityState === "visible") return;
  state.unread += 1;
  document.title = `(${state.unread}) Banter`;
}

function wireUp() {
  els.loginForm.addEventListener("submit", onLoginSubmit);
  els.nickname.addEventListener("input", () => { if (!state.socket) showLoginError(""); });
  els.composerForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
    // Ready for the next message, also after Send was clicked or activated from the keyboard.
    els.composer.focus();
  });
  // Pressing Send must not take the focus from the composer: on a phone that would close the
  // on-screen keyboard after every message.
  els.send.addEventListener("mousedown", (event) => event.preventDefault());
  els.composer.addEventListener("input", onComposerInput);
  // Keep the latest message in view when the log shrinks (phone keyboard opening).
  let wasAtBottom = true;
  els.messages.addEventListener("scroll", () => {
    wasAtBottom = isNearBottom();
    if (wasAtBottom) els.newMessages.hidden = true;
  }, { passive: true });
  new ResizeObserver(() => { if (wasAtBottom) scrollToBottom(); }).observe(els.messages);
  els.newMessages.addEventListener("click", () => { scrollToBottom(); els.composer.focus(); });
  // The button floats over the log: wheel scrolling over it scrolls the log, instead of stopping
  // dead when the button appears under a resting pointer.
  els.newMessages.addEventListener("wheel", (event) => {
    const unit = [1, 16, els.messages.clientHeight][event.deltaMode] ?? 1; // pixels, lines, pages
    els.messages.scrollBy({ top: event.deltaY * unit, left: event.deltaX * unit });
  }, { passive: true });
  els.usersToggle.addEventListener("click", () => {
    setSidebar(els.usersToggle.getAttribute("aria-expanded") !== "true");
  });
  // Escape closes the phone-width people panel from anywhere, like other popups.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !els.chat.classList.contains("sidebar-open")) return;
    setSidebar(false);
    els.usersToggle.focus();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    state.unread = 0;
    document.title = "Banter";
  });
  // Leave on purpose so others see "left" at once rather than after the grace period.
  window.addEventListener("pagehide", () => state.socket?.disconnect());
  // Coming back from the back/forward cache: rejoin as if reconnecting.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.socket && state.joinedOnce && !state.replaced) state.socket.connect();
  });
}

wireUp();
els.nickname.focus();
