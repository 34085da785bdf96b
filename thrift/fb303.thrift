// fb303: the base service Facebook daemons expose so that monitors can ask
// them how they are. Scribe extends it; the method names, argument ids and
// types here are those of fb303's own IDL, so stock tools (fb303_status,
// scribe_ctrl, nagios checks) work unchanged against Freeway's ingest ports.
// getCpuProfile (and the long-gone getLimitedReflection) are left out: a
// call to them is answered "unknown method".

namespace go fb303

enum fb_status {
  DEAD = 0,
  STARTING = 1,
  ALIVE = 2,
  STOPPING = 3,
  STOPPED = 4,
  WARNING = 5,
}

service FacebookService {
  // Name of the service ("freeway-agent", "freeway-calligraphus").
  string getName(),

  // Version of the running binary.
  string getVersion(),

  fb_status getStatus(),

  // Human-readable reason for the status.
  string getStatusDetails(),

  // Counters: entries received, written, rejected, TRY_LATER sent, queue depth.
  map<string, i64> getCounters(),

  i64 getCounter(1: string key),

  // Unix seconds at which the process started serving.
  i64 aliveSince(),

  // Options are the process's effective configuration, as flat
  // "section.key" -> value strings (no secrets). setOption is refused:
  // the configuration is the file; edit it and call reinitialize.
  void setOption(1: string key, 2: string value),
  string getOption(1: string key),
  map<string, string> getOptions(),

  // Reload the configuration file and restart the process's components
  // with it (a file that does not validate is logged and ignored), and
  // stop gracefully, as SIGHUP and SIGTERM do. Honoured only from the
  // local host.
  oneway void reinitialize(),
  oneway void shutdown(),
}
