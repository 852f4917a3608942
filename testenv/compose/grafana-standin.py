"""Grafana stand-in: a real SQLite grafana.db in WAL mode, written continuously, and /api/health on :3000.

Grafana is not packaged in Debian; what a volume backup must get right about it is its SQLite
database, so this keeps one busy the way Grafana does (dashboards saved, sessions coming and going).
On the first start it also writes Grafana's other files; a restored volume is used as it is.
"""
import http.server
import json
import os
import signal
import sqlite3
import sys
import threading
import time

DATA_DIR = os.environ.get("DATA_DIR", "/var/lib/grafana")
DB = os.path.join(DATA_DIR, "grafana.db")
MARKER = os.path.join(DATA_DIR, ".minimarket-initialised")
DASHBOARDS = ("Ventas por día", "Stock por góndola", "Agentes")


def first_start():
    for sub in ("plugins", "csv", "png", "dashboards"):
        os.makedirs(os.path.join(DATA_DIR, sub), exist_ok=True)
    with open(os.path.join(DATA_DIR, "dashboards", "ventas.json"), "w", encoding="utf-8") as handle:
        handle.write('{"title":"Ventas por día","uid":"ventas","panels":[{"title":"Góndolas con stock bajo"}]}\n')
    with open(os.path.join(DATA_DIR, "csv", "informe año 2024.csv"), "w", encoding="utf-8") as handle:
        handle.write("fecha,total\n2024-01-01,1234.50\n")
    os.symlink("dashboards/ventas.json", os.path.join(DATA_DIR, "dashboard-principal.json"))
    conn = sqlite3.connect(DB)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript("""
        CREATE TABLE dashboard (id INTEGER PRIMARY KEY, uid TEXT UNIQUE NOT NULL, title TEXT NOT NULL,
                                version INTEGER NOT NULL DEFAULT 1, data TEXT NOT NULL, updated TEXT NOT NULL);
        CREATE TABLE user_auth_token (id INTEGER PRIMARY KEY, token TEXT NOT NULL, created_at REAL NOT NULL);
    """)
    for number, title in enumerate(DASHBOARDS):
        conn.execute("INSERT INTO dashboard (uid, title, data, updated) VALUES (?, ?, ?, datetime('now'))",
                     ("d%d" % number, title, json.dumps({"title": title, "panels": [{"id": 1}]})))
    conn.commit()
    conn.close()
    os.chmod(DB, 0o640)
    with open(MARKER, "w") as handle:
        handle.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/api/health"
        body = json.dumps({"database": "ok"} if ok else {"message": "Not found"}).encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    signal.signal(signal.SIGTERM, lambda *unused: sys.exit(0))
    if not os.path.exists(MARKER):
        first_start()
    conn = sqlite3.connect(DB, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    server = http.server.ThreadingHTTPServer(("", 3000), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("grafana-standin: serving %s on :3000" % DB, flush=True)
    tick = 0
    try:
        while True:
            with conn:
                conn.execute("INSERT INTO user_auth_token (token, created_at) VALUES (hex(randomblob(16)), ?)", (time.time(),))
                conn.execute("DELETE FROM user_auth_token WHERE id <= (SELECT max(id) - 200 FROM user_auth_token)")
                if tick % 20 == 0:
                    conn.execute("UPDATE dashboard SET version = version + 1, updated = datetime('now') WHERE uid = 'd0'")
            tick += 1
            time.sleep(0.1)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
