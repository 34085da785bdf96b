// Readiness probe for the HDFS that deploy/engines/engines.sh starts.
//
// Waits (in one JVM, polling) until the NameNode is out of safe mode AND
// reports at least one live DataNode, then proves a client can write, read
// back and delete a small file. Exits 0 only then; 1 on timeout.
//
// Usage: java -cp <conf dir>:<hdfs classpath>:<dir of this class> HdfsProbe <timeout-seconds>
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.hdfs.DistributedFileSystem;
import org.apache.hadoop.hdfs.protocol.DatanodeInfo;
import org.apache.hadoop.hdfs.protocol.HdfsConstants.DatanodeReportType;

public class HdfsProbe {
  public static void main(String[] args) throws Exception {
    long timeoutMs = (args.length > 0 ? Long.parseLong(args[0]) : 120) * 1000L;
    long deadline = System.currentTimeMillis() + timeoutMs;
    Configuration conf = new Configuration();
    // The loop below retries; do not let the IPC client sit in its own retries.
    conf.setInt("ipc.client.connect.max.retries", 0);
    conf.setInt("ipc.client.connect.max.retries.on.timeouts", 0);
    conf.setInt("ipc.client.connect.timeout", 2000);
    conf.setBoolean("fs.hdfs.impl.disable.cache", true);

    String state = "not tried";
    while (true) {
      try (FileSystem raw = FileSystem.newInstance(conf)) {
        DistributedFileSystem fs = (DistributedFileSystem) raw;
        if (fs.isInSafeMode()) {
          state = "NameNode in safe mode";
        } else {
          DatanodeInfo[] live = fs.getDataNodeStats(DatanodeReportType.LIVE);
          if (live.length < 1) {
            state = "no live DataNode yet";
          } else {
            Path p = new Path("/tmp/.freeway-engines-probe-" + ProcessHandle.current().pid());
            byte[] want = ("freeway engines probe " + System.nanoTime()).getBytes(StandardCharsets.UTF_8);
            try (OutputStream out = fs.create(p, true)) {
              out.write(want);
            }
            byte[] got;
            try (InputStream in = fs.open(p)) {
              got = in.readAllBytes();
            }
            fs.delete(p, false);
            if (!Arrays.equals(want, got)) {
              throw new IllegalStateException("read back " + got.length + " bytes that differ from what was written");
            }
            System.out.println("hdfs ready: " + live.length + " live DataNode(s), write/read/delete ok");
            return;
          }
        }
      } catch (Exception e) {
        state = e.getClass().getSimpleName() + ": " + firstLine(e.getMessage());
      }
      if (System.currentTimeMillis() > deadline) {
        System.err.println("hdfs not ready after " + timeoutMs / 1000 + " s: " + state);
        System.exit(1);
      }
      Thread.sleep(500);
    }
  }

  static String firstLine(String s) {
    if (s == null) return "";
    int i = s.indexOf('\n');
    return i < 0 ? s : s.substring(0, i);
  }
}
