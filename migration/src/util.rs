//! Small statement builders shared by the migrations.
//!
//! FROZEN: landed migrations call these, so changing what one emits would silently change
//! history. Add a new helper instead of editing an existing one.

use sea_orm_migration::prelude::*;

/// `CREATE INDEX <name> ON <table> (<cols>)`.
pub(crate) fn index<T, C>(
    name: &str,
    table: T,
    cols: impl IntoIterator<Item = C>,
) -> IndexCreateStatement
where
    T: IntoIden,
    C: IntoIden,
{
    let mut index = Index::create();
    index.name(name).table(table);
    for col in cols {
        index.col(col);
    }
    index
}

/// `CREATE UNIQUE INDEX <name> ON <table> (<cols>)`.
///
/// Unique constraints are unique indexes on both backends, so they can be named (`uq_...`) and
/// dropped with the table; a violation surfaces as `SqlErr::UniqueConstraintViolation`.
pub(crate) fn unique<T, C>(
    name: &str,
    table: T,
    cols: impl IntoIterator<Item = C>,
) -> IndexCreateStatement
where
    T: IntoIden,
    C: IntoIden,
{
    let mut index = index(name, table, cols);
    index.unique();
    index
}

/// A named foreign key `<from_table>.<from_col> → <to_table>.<to_col>`.
pub(crate) fn foreign_key<FT, FC, TT, TC>(
    name: &str,
    (from_table, from_col): (FT, FC),
    (to_table, to_col): (TT, TC),
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement
where
    FT: IntoIden,
    FC: IntoIden,
    TT: IntoIden,
    TC: IntoIden,
{
    ForeignKey::create()
        .name(name)
        .from(from_table, from_col)
        .to(to_table, to_col)
        .on_delete(on_delete)
        .take()
}

/// Runs every statement in order.
pub(crate) async fn create_indexes(
    manager: &SchemaManager<'_>,
    indexes: impl IntoIterator<Item = IndexCreateStatement>,
) -> Result<(), DbErr> {
    for index in indexes {
        manager.create_index(index).await?;
    }
    Ok(())
}

/// `DROP TABLE <table>` for each table in order (dependants first); their indexes go with them.
pub(crate) async fn drop_tables<T: IntoIden + 'static>(
    manager: &SchemaManager<'_>,
    tables: impl IntoIterator<Item = T>,
) -> Result<(), DbErr> {
    for table in tables {
        manager
            .drop_table(Table::drop().table(table).to_owned())
            .await?;
    }
    Ok(())
}
