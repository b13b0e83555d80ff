// Fetching the server's JSON, and sending actions with the management token.

export class ApiError extends Error {}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (!response.ok) throw new ApiError(`${response.status}: ${(body && body.error) || response.statusText}`);
  return body;
}

export async function get(path) {
  // The token too when one is entered: drift reports need it on a server that sets one.
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  return answer(await fetch(path, { headers }));
}

export function token() {
  return document.getElementById("token").value.trim();
}

export async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  return answer(await fetch(path, { method: "POST", headers, body: JSON.stringify(body ?? {}) }));
}

export const enc = encodeURIComponent;
