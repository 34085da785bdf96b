package dev.freeway.bench;

import java.io.BufferedWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.fs.Path;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.CloseableIterator;
import org.apache.flink.util.Collector;

/**
 * The Flink peer of make bench: reads the bench's JSON lines file
 * ({"ts":<unix ms>,"key":"...","value":<int>,...}), parses each line with
 * Jackson, and counts and sums value per key per 1-minute tumbling
 * event-time window, in streaming mode on a local mini-cluster.
 *
 * <p>Usage: WindowJob LINES OUT.csv PARALLELISM. Writes key,window start
 * ms,count,sum per cell to OUT.csv and one line of figures to stdout:
 * {@code records=N first_record_ms=T end_ms=T job_ms=T} (wall times, so the
 * harness can leave the mini-cluster's start-up out of the rate).
 */
public final class WindowJob {
    /** When the first line was parsed, in this JVM (the mini-cluster runs here). */
    static final AtomicLong FIRST = new AtomicLong();
    static final AtomicLong RECORDS = new AtomicLong();

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: WindowJob LINES OUT.csv PARALLELISM");
            System.exit(2);
        }
        long start = System.currentTimeMillis();
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setParallelism(Integer.parseInt(args[2]));

        FileSource<String> source = FileSource.forRecordStreamFormat(new TextLineInputFormat(), new Path(args[0])).build();
        DataStream<Tuple3<String, Long, Long>> records = env
                .fromSource(source, WatermarkStrategy.noWatermarks(), "lines")
                .map(new Parse())
                .assignTimestampsAndWatermarks(WatermarkStrategy
                        .<Tuple3<String, Long, Long>>forBoundedOutOfOrderness(Duration.ofSeconds(1))
                        .withTimestampAssigner((r, ts) -> r.f1));
        DataStream<Tuple4<String, Long, Long, Long>> cells = records
                .keyBy(r -> r.f0)
                .window(TumblingEventTimeWindows.of(Duration.ofMinutes(1)))
                .aggregate(new CountSum(), new Label());

        long n = 0;
        try (CloseableIterator<Tuple4<String, Long, Long, Long>> it = cells.executeAndCollect("freeway-bench-window");
             BufferedWriter out = Files.newBufferedWriter(Paths.get(args[1]), StandardCharsets.UTF_8)) {
            while (it.hasNext()) {
                Tuple4<String, Long, Long, Long> c = it.next();
                out.write(c.f0 + "," + c.f1 + "," + c.f2 + "," + c.f3 + "\n");
                n++;
            }
        }
        long end = System.currentTimeMillis();
        System.out.println("records=" + RECORDS.get() + " cells=" + n + " first_record_ms=" + FIRST.get()
                + " end_ms=" + end + " job_ms=" + (end - start));
    }

    /** Parses a line with Jackson into (key, ts ms, value). */
    static final class Parse implements MapFunction<String, Tuple3<String, Long, Long>> {
        private transient ObjectMapper mapper;

        @Override
        public Tuple3<String, Long, Long> map(String line) throws Exception {
            if (mapper == null) {
                mapper = new ObjectMapper();
                FIRST.compareAndSet(0, System.currentTimeMillis());
            }
            RECORDS.incrementAndGet();
            JsonNode n = mapper.readTree(line);
            return Tuple3.of(n.get("key").asText(), n.get("ts").asLong(), n.get("value").asLong());
        }
    }

    /** Count and sum of value. */
    static final class CountSum implements AggregateFunction<Tuple3<String, Long, Long>, long[], long[]> {
        @Override
        public long[] createAccumulator() {
            return new long[2];
        }

        @Override
        public long[] add(Tuple3<String, Long, Long> r, long[] acc) {
            acc[0]++;
            acc[1] += r.f2;
            return acc;
        }

        @Override
        public long[] getResult(long[] acc) {
            return acc;
        }

        @Override
        public long[] merge(long[] a, long[] b) {
            a[0] += b[0];
            a[1] += b[1];
            return a;
        }
    }

    /** Names a cell by its key and window start. */
    static final class Label extends ProcessWindowFunction<long[], Tuple4<String, Long, Long, Long>, String, TimeWindow> {
        @Override
        public void process(String key, Context ctx, Iterable<long[]> in, Collector<Tuple4<String, Long, Long, Long>> out) {
            long[] acc = in.iterator().next();
            out.collect(Tuple4.of(key, ctx.window().getStart(), acc[0], acc[1]));
        }
    }
}
