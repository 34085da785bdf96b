// Readiness probe for the HBase Thrift2 gateway that deploy/engines/engines.sh
// starts: framed transport, binary protocol (what the Go client speaks).
//
// Polls until, through the gateway, a table can be created (if missing) and a
// cell can be put and read back. HBase answers "master is initializing" for a
// while after the port opens, so every step is retried until the deadline.
// Exits 0 only when the round trip worked; 1 on timeout.
//
// Usage: java -cp <hbase classpath>:<dir of this class> HBaseThriftProbe <host> <port> <timeout-seconds>
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Collections;

import org.apache.hadoop.hbase.thrift2.generated.TColumnFamilyDescriptor;
import org.apache.hadoop.hbase.thrift2.generated.TColumnValue;
import org.apache.hadoop.hbase.thrift2.generated.TGet;
import org.apache.hadoop.hbase.thrift2.generated.THBaseService;
import org.apache.hadoop.hbase.thrift2.generated.TIOError;
import org.apache.hadoop.hbase.thrift2.generated.TPut;
import org.apache.hadoop.hbase.thrift2.generated.TResult;
import org.apache.hadoop.hbase.thrift2.generated.TTableDescriptor;
import org.apache.hadoop.hbase.thrift2.generated.TTableName;
import org.apache.thrift.TConfiguration;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.layered.TFramedTransport;

public class HBaseThriftProbe {
  static final String TABLE = "freeway_engines_probe";

  static ByteBuffer b(String s) {
    return ByteBuffer.wrap(s.getBytes(StandardCharsets.UTF_8));
  }

  public static void main(String[] args) throws Exception {
    String host = args.length > 0 ? args[0] : "127.0.0.1";
    int port = args.length > 1 ? Integer.parseInt(args[1]) : 9090;
    long timeoutMs = (args.length > 2 ? Long.parseLong(args[2]) : 240) * 1000L;
    long deadline = System.currentTimeMillis() + timeoutMs;

    String state = "not tried";
    while (true) {
      TTransport transport = null;
      try {
        int left = (int) Math.max(5000, Math.min(60000, deadline - System.currentTimeMillis()));
        transport = new TFramedTransport(new TSocket(new TConfiguration(), host, port, left));
        transport.open();
        THBaseService.Client client = new THBaseService.Client(new TBinaryProtocol(transport));
        TTableName name = new TTableName(b(TABLE));
        if (!client.tableExists(name)) {
          TTableDescriptor desc = new TTableDescriptor(name);
          desc.addToColumns(new TColumnFamilyDescriptor(b("p")));
          try {
            client.createTable(desc, Collections.emptyList());
          } catch (TIOError e) {
            if (!client.tableExists(name)) throw e; // lost a race with another probe: fine
          }
        }
        String value = "v" + System.nanoTime();
        client.put(b(TABLE), new TPut(b("row"), Collections.singletonList(new TColumnValue(b("p"), b("q"), b(value)))));
        TResult r = client.get(b(TABLE), new TGet(b("row")));
        String got = r.getColumnValuesSize() == 1
            ? StandardCharsets.UTF_8.decode(r.getColumnValues().get(0).bufferForValue()).toString()
            : "<" + r.getColumnValuesSize() + " cells>";
        if (!value.equals(got)) throw new IllegalStateException("get returned " + got + ", want " + value);
        System.out.println("hbase thrift2 ready at " + host + ":" + port + ": create table/put/get ok");
        return;
      } catch (TIOError e) {
        state = "TIOError: " + firstLine(e.getMessage());
      } catch (Exception e) {
        state = e.getClass().getSimpleName() + ": " + firstLine(e.getMessage());
      } finally {
        if (transport != null) transport.close();
      }
      if (System.currentTimeMillis() > deadline) {
        System.err.println("hbase thrift2 not ready after " + timeoutMs / 1000 + " s: " + state);
        System.exit(1);
      }
      Thread.sleep(1000);
    }
  }

  static String firstLine(String s) {
    if (s == null) return "";
    int i = s.indexOf('\n');
    return i < 0 ? s : s.substring(0, i);
  }
}
