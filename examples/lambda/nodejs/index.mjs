// A Lambda handler (Node.js 20+) that reads a database secret through the
// secretcache extension: one loopback call, no AWS SDK. Uses the global fetch.

// The layer listens on this port of both loopbacks; the token is the
// function's own session token, which Lambda sets for every invocation.
const PORT = process.env.PARAMETERS_SECRETS_EXTENSION_HTTP_PORT ?? "8015";

export async function getSecret(secretId, { refresh = false } = {}) {
  const query = new URLSearchParams({ secretId });
  if (refresh) query.set("refreshNow", "true");
  const response = await fetch(
    `http://localhost:${PORT}/secretsmanager/get?${query}`,
    { headers: { "X-Aws-Parameters-Secrets-Token": process.env.AWS_SESSION_TOKEN } },
  );
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    throw new Error(`secretcache: ${response.status} ${error.__type ?? ""}`);
  }
  return response.json();
}

export async function handler(event) {
  const secret = await getSecret(process.env.DB_SECRET_ID ?? "prod/db");
  const credentials = JSON.parse(secret.SecretString);
  // Connect with credentials.username / credentials.password (never log
  // them); on an authentication error, getSecret(id, { refresh: true }) once.
  return { user: credentials.username, version: secret.VersionId };
}
