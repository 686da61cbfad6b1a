// Preloaded into Portkey's Node process (node --require): every server it opens listens on
// 127.0.0.1 only. Portkey's start-server.js takes a port and no host, and would otherwise
// listen on every interface of the machine for the length of the benchmark.
"use strict";
const net = require("net");

const LOOPBACK = "127.0.0.1";
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const [first, second] = args;
  if (first !== null && typeof first === "object" && !("path" in first)) {
    args[0] = { ...first, host: LOOPBACK };
  } else if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    if (second === undefined || second === null || typeof second === "string") {
      args[1] = LOOPBACK;
    } else {
      args.splice(1, 0, LOOPBACK); // listen(port, backlog?, callback?)
    }
  }
  return listen.apply(this, args);
};
