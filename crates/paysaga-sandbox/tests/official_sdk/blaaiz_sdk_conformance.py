"""Drives the paysaga sandbox's Blaaiz API with Blaaiz's official Python SDK, unchanged.

Run by crates/paysaga-sandbox/tests/official_sdk.rs, which starts the sandbox and passes:
BLAAIZ_BASE_URL, BLAAIZ_CLIENT_ID, BLAAIZ_CLIENT_SECRET, BLAAIZ_API_KEY,
BLAAIZ_WEBHOOK_SECRET, BLAAIZ_NGN_WALLET.

Every check raises on failure (non-zero exit, the reason on stderr). On success the last line
of stdout is a JSON summary the Rust test asserts on.
"""

import http.server
import json
import os
import sys
import threading
import time

import blaaiz
from blaaiz import Blaaiz, BlaaizError

ENV = os.environ
BASE = ENV["BLAAIZ_BASE_URL"]
SECRET = ENV["BLAAIZ_WEBHOOK_SECRET"]
WALLET = ENV["BLAAIZ_NGN_WALLET"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records every webhook: (path, raw body text, lower-cased headers)."""

    received = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode("utf-8")
        headers = {k.lower(): v for k, v in self.headers.items()}
        with Receiver.lock:
            Receiver.received.append((self.path, raw, headers))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def hooks(path):
    with Receiver.lock:
        return [(raw, h) for (p, raw, h) in Receiver.received if p == path]


def wait_for(path, pred, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for raw, h in hooks(path):
            body = json.loads(raw)
            if pred(body):
                return body
        time.sleep(0.05)
    raise AssertionError(f"no webhook {what} at {path}; got {hooks(path)}")


def expect_error(call, status, what):
    try:
        call()
    except BlaaizError as e:
        check(e.status == status, f"{what}: status {e.status} ({e.message}), expected {status}")
        return e
    raise AssertionError(f"{what}: succeeded, expected HTTP {status}")


def main():
    summary = {"sdk_version": getattr(blaaiz, "__version__", "?")}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_base = f"http://127.0.0.1:{server.server_address[1]}"

    # OAuth (the SDK's default: every Blaaiz scope) and the legacy API key.
    sdk = Blaaiz(client_id=ENV["BLAAIZ_CLIENT_ID"], client_secret=ENV["BLAAIZ_CLIENT_SECRET"], base_url=BASE)
    key_sdk = Blaaiz(api_key=ENV["BLAAIZ_API_KEY"], base_url=BASE)
    check(sdk.client.use_oauth and not key_sdk.client.use_oauth, "auth modes")
    check(sdk.test_connection(), "test_connection with OAuth")
    check(key_sdk.test_connection(), "test_connection with the API key")

    # A scope Blaaiz does not define is refused at the token endpoint; a token without the
    # endpoint's scope is refused by the endpoint.
    e = expect_error(
        lambda: Blaaiz(client_id=ENV["BLAAIZ_CLIENT_ID"], client_secret=ENV["BLAAIZ_CLIENT_SECRET"],
                       base_url=BASE, oauth_scope="customer:read file:write").customers.list(),
        400, "token for file:write")
    check(e.code == "invalid_scope", f"invalid_scope code, got {e.code}")
    narrow = Blaaiz(client_id=ENV["BLAAIZ_CLIENT_ID"], client_secret=ENV["BLAAIZ_CLIENT_SECRET"],
                    base_url=BASE, oauth_scope="customer:read")
    check(narrow.customers.list()["status"] == 200, "customer:read lists customers")
    expect_error(lambda: narrow.currencies.list(), 403, "currency list without currency:read")
    summary["scopes_enforced"] = True

    # Webhooks: register, get.
    urls = {
        "collection_url": f"{hook_base}/collection",
        "payout_url": f"{hook_base}/payout",
        "customer_url": f"{hook_base}/customer",
    }
    reg = sdk.webhooks.register(urls)
    check(reg["status"] == 200 and reg["data"]["data"]["payout_url"] == urls["payout_url"], f"register: {reg}")
    got = sdk.webhooks.get()["data"]["data"]
    check(all(got[k] == v for k, v in urls.items()), f"webhook get: {got}")

    # Reference data the SDK's helpers use.
    wallets = sdk.wallets.list()["data"]["data"]
    check(any(w["id"] == WALLET for w in wallets), f"wallets: {wallets}")
    check(sdk.wallets.get(WALLET)["data"]["data"]["currency"] == "NGN", "wallet get")
    banks = sdk.banks.list({"currency": "NGN"})["data"]["data"]
    check(len(banks) > 0, "banks")
    bank_id = banks[0]["id"]

    # Customers: create (OAuth and API key), get, list.
    stamp = str(int(time.time() * 1000))
    customer = {
        "type": "individual", "email": f"ada.{stamp}@example.com", "country": "NG",
        "first_name": "Ada", "last_name": "Okafor", "id_type": "passport", "id_number": "A" + stamp,
    }
    created = sdk.customers.create(customer)
    check(created["status"] == 201, f"customer create: {created}")
    cid = created["data"]["data"]["id"]
    check(created["data"]["data"]["verification_status"] == "PENDING", "starts PENDING")
    by_key = key_sdk.customers.create({**customer, "email": f"bola.{stamp}@example.com"})
    check(by_key["status"] == 201, "customer create with the API key")
    check(sdk.customers.get(cid)["data"]["data"]["id"] == cid, "customer get")
    listed = sdk.customers.list({"email": customer["email"]})["data"]["data"]
    check([c["id"] for c in listed] == [cid], f"customer list by email: {listed}")

    # Documents: the SDK's complete upload (pre-signed URL without file_name/file_type, PUT with
    # Content-Type only, attach) for the identity document and the proof of address.
    uploads = []
    for category, name, ctype in [("identity", "passport.jpg", "image/jpeg"),
                                  ("proof_of_address", "bill.pdf", "application/pdf")]:
        up = sdk.customers.upload_file_complete(cid, {
            "file": b"\xff\xd8 sandbox document " + category.encode(),
            "file_category": category, "filename": name, "content_type": ctype,
        })
        check(up["status"] == 200 and up["file_id"], f"upload {category}: {up}")
        uploads.append(up["file_id"])
    summary["uploads"] = len(uploads)

    # Verification: the customer webhook, then the customer itself.
    verified = wait_for("/customer", lambda b: b.get("customer_id") == cid and b.get("new_status") == "VERIFIED",
                        "customer VERIFIED")
    check(verified["event_type"] == "customer.status_changed", f"event: {verified}")
    status = sdk.customers.get(cid)["data"]["data"]["verification_status"]
    check(status == "VERIFIED", f"customer status {status}")

    # Payout through the SDK's create_complete_payout (fee breakdown + payout).
    result = sdk.create_complete_payout({"payout_data": {
        "wallet_id": WALLET, "customer_id": cid, "method": "bank_transfer",
        "from_amount": 1500.25, "from_currency_id": "NGN", "to_currency_id": "NGN",
        "account_number": "0123456789", "bank_id": bank_id, "note": "sdk-" + stamp,
    }})
    txn = result["payout"]["transaction"]
    check(txn["status"] == "PENDING" and txn["amount"] == 1500.25, f"payout: {txn}")
    check(result["fees"]["data"]["you_send"] == 1500.25, f"fees: {result['fees']}")
    payout_hook = wait_for("/payout", lambda b: b.get("transaction_id") == txn["id"], "payout")
    check(payout_hook["transaction_status"] == "SUCCESSFUL", f"payout webhook: {payout_hook}")
    got = sdk.transactions.get(txn["id"])["data"]["data"]
    check(got["status"] == "SUCCESSFUL" and got["amount"] == 1500.25, f"transaction get: {got}")
    listed = sdk.transactions.list({"customer_id": cid})["data"]["data"]
    check([t["id"] for t in listed] == [txn["id"]], f"transaction list: {listed}")

    # Replay: the same payout event once more.
    replay = sdk.webhooks.replay({"transaction_id": txn["id"]})
    check(replay["data"]["message"] == "Webhook replayed successfully", f"replay: {replay}")
    deadline = time.time() + 20
    while len([1 for raw, _ in hooks("/payout") if json.loads(raw)["transaction_id"] == txn["id"]]) < 2:
        check(time.time() < deadline, "replayed payout webhook never arrived")
        time.sleep(0.05)
    copies = [json.loads(raw) for raw, _ in hooks("/payout") if json.loads(raw)["transaction_id"] == txn["id"]]
    check(copies[0]["event_id"] == copies[1]["event_id"], "a replay carries the same event_id")

    # Every webhook received verifies with the SDK's own verify_signature and construct_event;
    # a changed body does not.
    with Receiver.lock:
        received = list(Receiver.received)
    for path, raw, h in received:
        sig, ts = h.get("x-blaaiz-signature"), h.get("x-blaaiz-timestamp")
        check(sdk.webhooks.verify_signature(raw, sig, ts, SECRET), f"signature of {path}: {raw}")
        check(sdk.webhooks.construct_event(raw, sig, ts, SECRET)["verified"] is True, "construct_event")
        check(not sdk.webhooks.verify_signature(raw + " ", sig, ts, SECRET), "a changed body fails")
    summary["webhooks_verified"] = len(received)
    summary["webhook_paths"] = sorted({p for p, _, _ in received})
    summary["customer_id"] = cid
    summary["transaction_id"] = txn["id"]
    print(json.dumps(summary))
    server.shutdown()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report every failure the same way
        print(f"official SDK conformance failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
