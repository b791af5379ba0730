#!/usr/bin/env python3
"""The demo's application: loads keys into etcd, sets up auth, and keeps
writing (puts, overwrites, deletes, keys on a lease) as an application user
through etcd's JSON gateway. Standard library only; bounded in count and time.

  workload.py load ENDPOINT PREFIX N
  workload.py auth ENDPOINT PREFIX           (root/rootpw, app/apppw)
  workload.py write ENDPOINT PREFIX SECONDS  (as app; prints a summary)
  workload.py put-as-app ENDPOINT KEY        (exit 0 if accepted, 1 if refused)
"""
import base64, http.client, json, random, sys, time

def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()

class Etcd:
    def __init__(self, endpoint, token=None):
        host, port = endpoint.rsplit(":", 1)
        assert host.startswith("127.") or host in ("localhost", "[::1]"), "loopback only"
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.token = token

    def call(self, path, body):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = self.token
        self.conn.request("POST", "/v3/" + path, json.dumps(body), headers)
        r = self.conn.getresponse()
        data = json.loads(r.read() or b"{}")
        if r.status != 200 or "error" in data:
            raise RuntimeError(f"{path}: {r.status} {data}")
        return data

    @staticmethod
    def login(endpoint, user, password):
        e = Etcd(endpoint)
        token = e.call("auth/authenticate", {"name": user, "password": password})["token"]
        return Etcd(endpoint, token)

def load(endpoint, prefix, n):
    e = Etcd(endpoint)
    for start in range(0, n, 128):
        ops = [{"requestPut": {"key": b64(f"{prefix}/key-{i:06d}"), "value": b64("v" * 200 + f"{i:06d}")}}
               for i in range(start, min(start + 128, n))]
        e.call("kv/txn", {"success": ops})
    print(f"loaded {n} keys under {prefix}/")

def auth(endpoint, prefix):
    e = Etcd(endpoint)
    e.call("auth/user/add", {"name": "root", "password": "rootpw"})
    e.call("auth/user/grant", {"user": "root", "role": "root"})
    e.call("auth/role/add", {"name": "app"})
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    e.call("auth/role/grant", {"name": "app", "perm": {"permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)}})
    e.call("auth/user/add", {"name": "app", "password": "apppw"})
    e.call("auth/user/grant", {"user": "app", "role": "app"})
    e.call("auth/enable", {})
    print("etcd auth enabled: root (Ferry) and app (the application, read-write on its prefix)")

def write(endpoint, prefix, seconds):
    e = Etcd.login(endpoint, "app", "apppw")
    lease = e.call("lease/grant", {"TTL": 600})["ID"]
    rnd, ops, refused, end = random.Random(7), 0, 0, time.time() + float(seconds)
    while time.time() < end and ops < 1_000_000:
        roll, key = rnd.randrange(100), f"{prefix}/key-{rnd.randrange(105_000):06d}"
        try:
            if roll < 60:
                e.call("kv/put", {"key": b64(key), "value": b64(f"updated-{ops}")})
            elif roll < 85:
                e.call("kv/deleterange", {"key": b64(key)})
            else:
                e.call("kv/put", {"key": b64(f"{prefix}/session-{rnd.randrange(200):03d}"), "value": b64("alive"), "lease": lease})
        except RuntimeError:
            refused += 1
        ops += 1
    print(f"application wrote {ops} operations ({refused} refused)")

def put_as_app(endpoint, key):
    try:
        Etcd.login(endpoint, "app", "apppw").call("kv/put", {"key": b64(key), "value": b64("x")})
        return 0
    except RuntimeError:
        return 1

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "load":
        load(args[0], args[1], int(args[2]))
    elif cmd == "auth":
        auth(args[0], args[1])
    elif cmd == "write":
        write(args[0], args[1], args[2])
    elif cmd == "put-as-app":
        sys.exit(put_as_app(args[0], args[1]))
    else:
        sys.exit(__doc__)
