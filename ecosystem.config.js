// pm2 process file for the miner.
//
//   cp miner.env.example miner.env && chmod 600 miner.env   # then edit it
//   pm2 start ecosystem.config.js && pm2 save && pm2 startup  # survive reboots
//   pm2 logs natix-miner / pm2 restart natix-miner / pm2 stop natix-miner
//   pm2 install pm2-logrotate                                 # rotate pm2's own capture files
//
// Several hotkeys on one host, one engine (the models loaded once): NATIX_HOTKEYS=hotkeys.yaml in miner.env
// (deploy/hotkeys.example.yaml, docs/scaling.md). Or one process each (N copies of the models):
//   NATIX_PM2_NAME=miner-2 NATIX_ENV_FILE=miner-2.env pm2 start ecosystem.config.js
const path = require("path");

const name = process.env.NATIX_PM2_NAME || "natix-miner";

module.exports = {
  apps: [
    {
      name,
      script: path.join(__dirname, "deploy", "start_miner.sh"),
      interpreter: "bash",
      cwd: __dirname,
      env: {
        NATIX_ENV_FILE: process.env.NATIX_ENV_FILE || path.join(__dirname, "miner.env"),
        PYTHONUNBUFFERED: "1",
      },
      autorestart: true,
      min_uptime: "120s",             // loading the cascade takes a while; earlier exits count as crashes
      max_restarts: 30,
      exp_backoff_restart_delay: 2000, // grows on repeated crashes (pm2 caps it at 15 s)
      kill_timeout: 30000,            // pm2 sends SIGINT first: the axon stops, engines close, spans flush
      time: true,
      merge_logs: true,
      out_file: path.join(__dirname, "logs", `${name}.out.log`),
      error_file: path.join(__dirname, "logs", `${name}.err.log`),
    },
  ],
};
