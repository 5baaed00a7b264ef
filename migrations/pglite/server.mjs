// Serve an in-memory PGlite with TimescaleDB on 127.0.0.1:$PORT.
// Prints "ready <port>" once clients may connect. One client at a time: the
// socket server queues a second connection until the first one ends.
import { PGlite } from "@electric-sql/pglite";
import { timescaledb } from "@electric-sql/pglite/timescaledb";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

const port = Number(process.env.PORT || 55433);
const db = await PGlite.create({
  dataDir: process.env.DATADIR || undefined,
  extensions: { timescaledb },
});
const server = new PGLiteSocketServer({ db, port, host: "127.0.0.1" });
await server.start();
console.log(`ready ${port}`);

const stop = async () => {
  await server.stop();
  await db.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
