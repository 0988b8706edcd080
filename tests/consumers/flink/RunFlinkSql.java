// Runs a Flink SQL script in a local mini cluster, the way sql-client.sh -f would, and prints the final
// rows of each query it contains as tab-separated "ROW" lines (after a "COLUMNS" line) on stdout.
//
//   java -cp 'JARS/*' RunFlinkSql.java SCRIPT.sql
//
// No build step: Java runs this file as a single-file source program (JEP 330); the jars are those of
// pom.xml beside it (tests/consumers/flink_sql.py resolves them once). Statements end with ';' at the end
// of a line; '--' comment lines are dropped. SET statements before the first other statement configure the
// environment (e.g. 'execution.runtime-mode' = 'batch'). A query's changelog is applied, so a streaming
// query over a bounded source prints its final rows too. Only the loopback interface is ever bound.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.CloseableIterator;

public class RunFlinkSql {
    private static final Pattern SET =
            Pattern.compile("(?is)SET\\s+'([^']*)'\\s*=\\s*'([^']*)'");
    private static final Pattern QUERY = Pattern.compile("(?is)(SELECT|WITH|VALUES)\\b.*");

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java -cp 'JARS/*' RunFlinkSql.java SCRIPT.sql");
            System.exit(2);
        }
        Configuration conf = new Configuration();
        // the mini cluster's REST endpoint and its TaskManager: loopback only, ephemeral ports
        conf.setString("rest.bind-address", "127.0.0.1");
        conf.setString("rest.address", "127.0.0.1");
        conf.setString("rest.bind-port", "0");
        conf.setString("jobmanager.bind-host", "127.0.0.1");
        conf.setString("jobmanager.rpc.address", "127.0.0.1");
        conf.setString("taskmanager.bind-host", "127.0.0.1");
        conf.setString("taskmanager.host", "127.0.0.1");
        // small: a test box with 2 shared cores
        conf.setString("parallelism.default", "1");
        conf.setString("taskmanager.memory.managed.size", "64m");
        conf.setString("taskmanager.memory.network.min", "16m");
        conf.setString("taskmanager.memory.network.max", "16m");

        TableEnvironment env = null;
        for (String statement : split(Files.readString(Path.of(args[0])))) {
            Matcher set = SET.matcher(statement);
            if (env == null && set.matches()) {
                conf.setString(set.group(1), set.group(2));
                continue;
            }
            if (env == null) {
                env = TableEnvironment.create(
                        EnvironmentSettings.newInstance().withConfiguration(conf).build());
            }
            TableResult result = env.executeSql(statement);
            if (QUERY.matcher(statement).matches()) {
                print(result);
            } else {
                result.await();
            }
        }
        // the mini cluster's threads would keep the JVM alive
        System.exit(0);
    }

    /** The script's statements, without '--' comment lines and without their closing ';'. */
    static List<String> split(String script) {
        List<String> statements = new ArrayList<>();
        StringBuilder current = new StringBuilder();
        for (String line : script.split("\n", -1)) {
            String trimmed = line.strip();
            if (trimmed.startsWith("--")) {
                continue;
            }
            current.append(line).append('\n');
            if (trimmed.endsWith(";")) {
                String statement = current.toString().strip();
                statements.add(statement.substring(0, statement.length() - 1).strip());
                current.setLength(0);
            }
        }
        if (!current.toString().isBlank()) {
            statements.add(current.toString().strip());
        }
        return statements;
    }

    /** Apply the query's changelog and print the rows left, in first-seen order. */
    static void print(TableResult result) throws Exception {
        Map<String, Integer> rows = new LinkedHashMap<>();
        try (CloseableIterator<Row> it = result.collect()) {
            while (it.hasNext()) {
                Row row = it.next();
                RowKind kind = row.getKind();
                StringBuilder line = new StringBuilder("ROW");
                for (int i = 0; i < row.getArity(); i++) {
                    line.append('\t').append(row.getField(i));
                }
                int delta = (kind == RowKind.INSERT || kind == RowKind.UPDATE_AFTER) ? 1 : -1;
                rows.merge(line.toString(), delta, Integer::sum);
            }
        }
        System.out.println("COLUMNS\t" + String.join("\t", result.getResolvedSchema().getColumnNames()));
        for (Map.Entry<String, Integer> entry : rows.entrySet()) {
            for (int i = 0; i < entry.getValue(); i++) {
                System.out.println(entry.getKey());
            }
        }
        System.out.flush();
    }
}
