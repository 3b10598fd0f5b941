// What the existing Raven web frontend does on the wire, in plain JS, for the browser tests.
//
// Every call below copies that frontend's behaviour exactly: its headers (Content-Type:
// application/json and the Bearer token on every API call, no Accept on POST /chat), its
// bodies, its upload (a PUT with only Content-Type), its stream reader (split each read on
// "\n", JSON.parse each non-empty line, skip what is not JSON, append `.response`, stop at
// `.error`), its stop button (an AbortController) and its error display (`errorData.detail`).
// Do not make it smarter than the frontend: the tests exist to prove the backend works with
// the client as it is. The only additions are records the tests read (window.raven.reads)
// and the SSE reader, which is what a client that asks for SSE would do.

(() => {
  const state = { backendUrl: '', token: '', controller: null };

  class ApiError extends Error {
    constructor(status, errorData, headers) {
      super(errorData && errorData.detail);
      this.status = status;
      this.errorData = errorData;
      this.retryAfter = headers.get('Retry-After');
    }
  }

  function configure(backendUrl, token) {
    state.backendUrl = backendUrl;
    state.token = token;
  }

  function headers() {
    return { 'Content-Type': 'application/json', Authorization: `Bearer ${state.token}` };
  }

  function showError(detail) {
    document.getElementById('error').textContent = detail;
  }

  // The frontend's error path: read the JSON body, show errorData.detail.
  async function failed(response) {
    const errorData = await response.json();
    showError(errorData.detail);
    throw new ApiError(response.status, errorData, response.headers);
  }

  async function api(method, path, body) {
    const response = await fetch(state.backendUrl + path, {
      method,
      headers: headers(),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) await failed(response);
    return response;
  }

  async function listChats(query = '') {
    const response = await api('GET', `/api/chats${query}`);
    return {
      chats: await response.json(),
      nextCursor: response.headers.get('X-Next-Cursor'),
      link: response.headers.get('Link'),
    };
  }

  async function createChat() {
    const response = await api('POST', '/api/chats/create', { title: null, user_id: 'ignored' });
    return response.json();
  }

  async function renameChat(chatId, title) {
    return (await api('PATCH', `/api/chats/${chatId}`, { title })).json();
  }

  async function deleteChat(chatId) {
    return (await api('DELETE', `/api/chats/${chatId}`)).json();
  }

  // Loads a chat's history and renders it as the frontend does: the text from `content`, an
  // <img src=media_url> for image media.
  async function loadHistory(chatId, query = '') {
    const response = await api('GET', `/api/chats/${chatId}${query}`);
    const messages = await response.json();
    const list = document.getElementById('messages');
    list.replaceChildren();
    for (const message of messages) {
      const item = document.createElement('div');
      item.className = `message ${message.role}`;
      item.dataset.messageId = message.messageId;
      const text = document.createElement('p');
      text.textContent = message.content;
      item.append(text);
      if (message.media_url && message.media_type && message.media_type.startsWith('image/')) {
        const image = document.createElement('img');
        image.src = message.media_url;
        item.append(image);
      }
      list.append(item);
    }
    return {
      messages,
      nextCursor: response.headers.get('X-Next-Cursor'),
      link: response.headers.get('Link'),
    };
  }

  // Resolves with the natural sizes of every rendered history image once each has loaded
  // (or failed: naturalWidth 0).
  async function historyImages() {
    const images = [...document.querySelectorAll('#messages img')];
    await Promise.all(
      images.map((image) =>
        image.complete
          ? null
          : new Promise((resolve) => {
              image.addEventListener('load', resolve, { once: true });
              image.addEventListener('error', resolve, { once: true });
            }),
      ),
    );
    return images.map((image) => ({ src: image.src, naturalWidth: image.naturalWidth }));
  }

  // The frontend's upload: ask for a URL, PUT the file with only its Content-Type, keep gcs_url.
  async function uploadFile(file) {
    const response = await api('POST', '/api/upload-url', {
      filename: file.name,
      contentType: file.type,
    });
    const { url, gcs_url } = await response.json();
    const put = await fetch(url, {
      method: 'PUT',
      body: file,
      headers: { 'Content-Type': file.type },
    });
    if (!put.ok) throw new Error(`upload failed: ${put.status} ${await put.text()}`);
    return { gcs_url, putStatus: put.status };
  }

  function pickedFile() {
    return document.getElementById('file').files[0];
  }

  async function uploadPickedFile() {
    const file = pickedFile();
    return { ...(await uploadFile(file)), type: file.type, name: file.name };
  }

  // POST /chat with the frontend's body: the client's history, then the new user message with
  // its media parts first. Reads the stream as the frontend does and records every read.
  // `stopAfterTexts`: press the stop button once that many pieces of text have arrived.
  async function sendMessage(chatId, history, text, media = [], stopAfterTexts = null) {
    const parts = [
      ...media.map((item) => ({ text: item.gcs_url, type: 'image', mimeType: item.mimeType })),
      { text, type: 'text' },
    ];
    const body = {
      chatId,
      messages: [
        ...history.map((message) => ({
          role: message.role,
          parts: [{ type: 'text', text: message.content }],
        })),
        { role: 'user', parts },
      ],
    };
    const controller = new AbortController();
    state.controller = controller;
    const started = performance.now();
    const response = await fetch(`${state.backendUrl}/chat`, {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) await failed(response);

    const reads = [];
    const lines = [];
    let answer = '';
    let error = null;
    let aborted = false;
    let textPieces = 0;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      reading: while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, { stream: true });
        const read = { at: performance.now() - started, texts: 0, done: false };
        reads.push(read);
        for (const line of chunk.split('\n')) {
          if (!line.trim()) continue;
          let data;
          try {
            data = JSON.parse(line);
          } catch {
            continue; // not JSON: the frontend skips it
          }
          lines.push(data);
          if (data.error) {
            error = data.error;
            showError(data.error);
            break reading;
          }
          if (data.response) {
            answer += data.response;
            read.texts += 1;
            textPieces += 1;
            document.getElementById('answer').textContent = answer;
          }
          if (data.type === 'done') read.done = true;
        }
        if (stopAfterTexts !== null && textPieces >= stopAfterTexts) stop();
      }
    } catch (caught) {
      if (caught.name !== 'AbortError') throw caught;
      aborted = true; // the stop button: the partial answer stays on screen
    }
    return {
      status: response.status,
      contentType: response.headers.get('Content-Type'),
      answer,
      error,
      aborted,
      reads,
      lines,
    };
  }

  // The stop button.
  function stop() {
    if (state.controller) state.controller.abort();
  }

  // Not the existing frontend: a client that asks for Server-Sent Events and parses `data:`
  // lines (buffering across reads, as an SSE parser must).
  async function sendMessageSse(chatId, text) {
    const response = await fetch(`${state.backendUrl}/chat`, {
      method: 'POST',
      headers: { ...headers(), Accept: 'text/event-stream' },
      body: JSON.stringify({ chatId, messages: [{ role: 'user', parts: [{ type: 'text', text }] }] }),
    });
    if (!response.ok) await failed(response);
    const events = [];
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    while (true) {
      const { done, value } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split('\n');
      buffer = done ? '' : lines.pop();
      for (const line of lines) {
        if (line.startsWith('data:')) events.push(JSON.parse(line.slice(5).trim()));
      }
      if (done) break;
    }
    return { status: response.status, contentType: response.headers.get('Content-Type'), events };
  }

  // Calls one API path and reports how the browser let the page see it, for the origin
  // checks: a fetch the browser refuses rejects with a TypeError.
  async function probe(url, init = {}) {
    try {
      const response = await fetch(url, init);
      return { readable: true, status: response.status, body: await response.text() };
    } catch (caught) {
      return { readable: false, error: `${caught.name}: ${caught.message}` };
    }
  }

  // Runs one of the calls above and turns an ApiError into data the test can read.
  async function attempt(name, ...args) {
    try {
      return { ok: true, value: await window.raven[name](...args) };
    } catch (caught) {
      if (!(caught instanceof ApiError)) throw caught;
      return {
        ok: false,
        status: caught.status,
        detail: caught.errorData.detail,
        code: caught.errorData.code,
        retryAfter: caught.retryAfter,
        shown: document.getElementById('error').textContent,
      };
    }
  }

  window.raven = {
    configure,
    headers,
    listChats,
    createChat,
    renameChat,
    deleteChat,
    loadHistory,
    historyImages,
    uploadFile,
    uploadPickedFile,
    sendMessage,
    sendMessageSse,
    stop,
    probe,
    attempt,
  };
})();
