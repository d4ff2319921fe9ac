//! Reading SQLite files as tests do: a column, a whole dump, the journal.

use std::path::Path;

/// The first column of `sql`'s rows in the SQLite database at `path` (read only), as text.
pub fn sqlite_column(path: &Path, sql: &str) -> Vec<String> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    let mut stmt = db.prepare(sql).expect("query");
    let rows = stmt
        .query_map([], |r| {
            r.get::<_, String>(0)
                .or_else(|_| r.get::<_, i64>(0).map(|i| i.to_string()))
        })
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// Whether the journal in `state_dir/state.db` has a step named `name` (read-only).
pub fn journal_has(state_dir: &Path, name: &str) -> bool {
    rusqlite::Connection::open_with_flags(
        state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|db| {
        db.query_row("SELECT count(*) FROM steps WHERE name = ?1", [name], |r| {
            r.get::<_, i64>(0)
        })
    })
    .is_ok_and(|n| n > 0)
}

/// Every row of every table of the SQLite file at `path` (read-only, WAL-aware), except
/// `database_versions`, after `PRAGMA integrity_check` passed.
pub fn dump_sqlite(path: &Path) -> Result<Vec<String>, String> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if ok != "ok" {
        return Err(format!("integrity_check: {ok}"));
    }
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'database_versions' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
            .map_err(|e| e.to_string())?;
        let n = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "{:?}",
                            r.get_ref(i).map(|v| v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|_| format!("{v:?}")))
                        )
                    })
                    .collect();
                Ok(cells.join("|"))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        out.extend(rows.into_iter().map(|r| format!("{t}: {r}")));
    }
    Ok(out)
}
