package pipeline.peers;

import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * A chain of hops, each a keyed dedup over a persistent (RocksDB) store with a changelog,
 * exactly-once v2: the shape of the pipeline's stages with no work of their own. Topic i feeds
 * hop i, which writes topic i+1. Configured by environment (see {@link #main}); prints
 * {@code RUNNING} once the application is running, so a driver can wait for it.
 */
public final class Chain {
  private Chain() {}

  /** Forwards a record the first time its key is seen, drops it after. */
  static final class Dedup implements Processor<byte[], byte[], byte[], byte[]> {
    private final String storeName;
    private ProcessorContext<byte[], byte[]> context;
    private KeyValueStore<Bytes, Long> seen;

    Dedup(String storeName) {
      this.storeName = storeName;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
      this.context = context;
      this.seen = context.getStateStore(storeName);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
      if (record.key() == null) {
        return;
      }
      Bytes key = Bytes.wrap(record.key());
      if (seen.get(key) != null) {
        return;
      }
      seen.put(key, record.timestamp());
      context.forward(record);
    }
  }

  static String env(String name, String fallback) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? fallback : v;
  }

  public static void main(String[] args) throws InterruptedException {
    List<String> topics = Arrays.asList(env("CHAIN_TOPICS", "").split(","));
    if (topics.size() < 2 || topics.contains("")) {
      System.err.println("CHAIN_TOPICS must name at least two topics: t0,t1[,...]");
      System.exit(64);
    }
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, env("CHAIN_APP_ID", "streams-chain"));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"));
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    // Kafka Streams' own default under exactly-once is 100 ms.
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, env("CHAIN_COMMIT_INTERVAL_MS", "100"));
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, env("CHAIN_THREADS", "1"));
    p.put(StreamsConfig.STATE_DIR_CONFIG, env("CHAIN_STATE_DIR", "/tmp/streams-chain"));
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, env("CHAIN_REPLICATION", "1"));

    StreamsBuilder builder = new StreamsBuilder();
    for (int i = 0; i + 1 < topics.size(); i++) {
      String store = "dedup-" + i;
      builder.addStateStore(
          Stores.keyValueStoreBuilder(
              Stores.persistentKeyValueStore(store), Serdes.Bytes(), Serdes.Long()));
      builder.stream(topics.get(i), Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
          .process(() -> new Dedup(store), store)
          .to(topics.get(i + 1), Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
    }

    KafkaStreams streams = new KafkaStreams(builder.build(), p);
    CountDownLatch stopped = new CountDownLatch(1);
    streams.setStateListener(
        (now, before) -> {
          if (now == KafkaStreams.State.RUNNING) {
            System.out.println("RUNNING");
            System.out.flush();
          }
          if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
            stopped.countDown();
          }
        });
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close();
                  stopped.countDown();
                }));
    streams.start();
    stopped.await();
    if (streams.state() == KafkaStreams.State.ERROR) {
      System.exit(1);
    }
  }
}
