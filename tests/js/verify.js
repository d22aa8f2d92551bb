// Verifies captured webhook deliveries with the maintained Standard Webhooks library for Node
// (npm "standardwebhooks"), as a receiver written in JavaScript would.
// stdin: a JSON list of {secret, body_base64, headers}; stdout: a JSON list of
// {ok, error, data}, one per entry. The body is verified as the exact bytes received.
// A "whsec_..." secret is given to the library as written; any other text as its UTF-8 bytes
// with {format: "raw"} (README "Webhooks").
"use strict";
const { Webhook } = require("standardwebhooks");

function verifier(secret) {
  if (secret.startsWith("whsec_")) {
    return new Webhook(secret);
  }
  return new Webhook(new Uint8Array(Buffer.from(secret, "utf8")), { format: "raw" });
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  input += chunk;
});
process.stdin.on("end", () => {
  const results = JSON.parse(input).map((entry) => {
    const body = new Uint8Array(Buffer.from(entry.body_base64, "base64"));
    try {
      const data = verifier(entry.secret).verify(body, entry.headers);
      return { ok: true, error: null, data };
    } catch (err) {
      return { ok: false, error: `${err.name}: ${err.message}`, data: null };
    }
  });
  process.stdout.write(JSON.stringify(results));
});
